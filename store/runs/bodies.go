package runs

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"runhub/store"
)

// The decoders of each mutation's body. REST, the sandbox proxy (an
// agent's params) and the hub (a /ws command) call them directly, so a rule
// and its message exist once; the Service methods then check what needs
// the store (the task's json_schema, the run's existence).

// runFields are the writable fields shared by run create and PATCH.
type runFields struct {
	status, environment         *string
	stage, branch, errorMessage **string
	outputSet                   bool
	output                      map[string]json.RawMessage
	state                       map[string]json.RawMessage
	stateRemoveKeys             []string
	onlyIfNonTerminal           bool
}

// decodeRunFields decodes the body of a run create or PATCH.
func decodeRunFields(body []byte) (*runFields, error) {
	f, err := ParseObject(body)
	if err != nil {
		return nil, err
	}
	var rf runFields
	if _, rf.status, err = f.str("status", false); err != nil {
		return nil, err
	}
	if _, rf.environment, err = f.str("environment", false); err != nil {
		return nil, err
	}
	for name, v := range map[string]*string{"status": rf.status, "environment": rf.environment} {
		if v != nil && *v == "" {
			return nil, invalid(name, "invalid_choice", `"" is not a valid choice.`)
		}
	}
	for _, nf := range []struct {
		name string
		dst  ***string
	}{{"stage", &rf.stage}, {"branch", &rf.branch}, {"error_message", &rf.errorMessage}} {
		present, v, err := f.str(nf.name, true)
		if err != nil {
			return nil, err
		}
		if present {
			*nf.dst = &v
		}
	}
	if rf.outputSet, rf.output, err = f.object("output", true); err != nil {
		return nil, err
	}
	if _, rf.state, err = f.object("state", false); err != nil {
		return nil, err
	}
	if rf.stateRemoveKeys, err = f.strList("state_remove_keys"); err != nil {
		return nil, err
	}
	if rf.onlyIfNonTerminal, err = f.flag("only_if_non_terminal"); err != nil {
		return nil, err
	}
	return &rf, nil
}

func deref(p **string) *string {
	if p == nil {
		return nil
	}
	return *p
}

// DecodeNewRun decodes a run create body; CreateRun checks the values.
func DecodeNewRun(body []byte) (store.NewRun, error) {
	rf, err := decodeRunFields(body)
	if err != nil {
		return store.NewRun{}, err
	}
	nr := store.NewRun{Stage: deref(rf.stage), Branch: deref(rf.branch), ErrorMessage: deref(rf.errorMessage),
		Output: rf.output, State: rf.state}
	if rf.status != nil {
		nr.Status = *rf.status
	}
	if rf.environment != nil {
		nr.Environment = *rf.environment
	}
	return nr, nil
}

// DecodeRunPatch decodes a run PATCH body (a REST PATCH, an agent's
// update); UpdateRun checks the values.
func DecodeRunPatch(body []byte) (store.RunPatch, error) {
	rf, err := decodeRunFields(body)
	if err != nil {
		return store.RunPatch{}, err
	}
	p := store.RunPatch{Status: rf.status, Stage: rf.stage, Branch: rf.branch, ErrorMessage: rf.errorMessage,
		Environment: rf.environment, State: rf.state, StateRemoveKeys: rf.stateRemoveKeys, OnlyIfNonTerminal: rf.onlyIfNonTerminal}
	if rf.outputSet {
		if rf.output == nil {
			p.ClearOutput = true
		} else {
			p.Output = rf.output
		}
	}
	return p, nil
}

// ErrOutputNotDict refuses a set_output whose output is not a JSON object
// (REST answers it {"error": ...}, the contract's shape for set_output).
var ErrOutputNotDict = errors.New("output must be a dictionary")

// DecodeSetOutput decodes a set_output body: {"output": {...}}.
func DecodeSetOutput(body []byte) (map[string]json.RawMessage, error) {
	f, err := ParseObject(body)
	if err != nil {
		return nil, err
	}
	var output map[string]json.RawMessage
	if raw := f["output"]; jsonKind(raw) != "dict" || json.Unmarshal(raw, &output) != nil {
		return nil, ErrOutputNotDict
	}
	return output, nil
}

// AppendLogBody is an append_log body: {"entries": [...]}. A caller whose
// body has more fields (an agent's seq and session) embeds it in its own
// struct and decodes with DecodeAppendLogInto, in the same single pass.
type AppendLogBody struct {
	Entries []json.RawMessage `json:"entries"`
}

// LogBody returns b: it is how DecodeAppendLogInto reaches the entries of
// a struct that embeds AppendLogBody.
func (b *AppendLogBody) LogBody() *AppendLogBody { return b }

// AppendLogDecoder is a pointer to AppendLogBody or to a struct embedding it.
type AppendLogDecoder interface{ LogBody() *AppendLogBody }

// DecodeAppendLog decodes an append_log body into its raw entries;
// AppendLog validates them one by one.
func DecodeAppendLog(body []byte) ([]json.RawMessage, error) {
	if entries, ok := splitEntries(body); ok {
		return entries, nil
	}
	var b AppendLogBody
	err := DecodeAppendLogInto(body, &b)
	return b.Entries, err
}

// splitEntries reads the body every agent sends, {"entries":[...]} (JSON
// whitespace between tokens allowed), in one validating scan and one walk,
// each entry a slice of body rather than a copy: what the general decoder
// (encoding/json into AppendLogBody) returns for it, byte for byte
// (FuzzSplitEntries). Any other body (another key, a key written with
// escapes or in other case, entries not a list, bytes that are not UTF-8,
// not JSON) is not its shape: ok is false and the general decoder reads it
// or names what is wrong.
func splitEntries(body []byte) (entries []json.RawMessage, ok bool) {
	if !utf8.Valid(body) || !json.Valid(body) {
		return nil, false
	}
	p := skipJSONSpace(body, 0)
	const head = `"entries"`
	if p >= len(body) || body[p] != '{' {
		return nil, false
	}
	p = skipJSONSpace(body, p+1)
	if len(body)-p < len(head) || string(body[p:p+len(head)]) != head {
		return nil, false
	}
	p = skipJSONSpace(body, p+len(head))
	if p >= len(body) || body[p] != ':' {
		return nil, false
	}
	p = skipJSONSpace(body, p+1)
	if p >= len(body) || body[p] != '[' {
		return nil, false
	}
	// The body is valid JSON: from here every value is well formed, and
	// the list ends with ']'.
	entries = make([]json.RawMessage, 0, 1)
	p = skipJSONSpace(body, p+1)
	if body[p] != ']' {
		for {
			end := jsonValueEnd(body, p)
			entries = append(entries, body[p:end:end])
			p = skipJSONSpace(body, end)
			if body[p] == ']' {
				break
			}
			p = skipJSONSpace(body, p+1) // the ','
		}
	}
	p = skipJSONSpace(body, p+1)
	if p >= len(body) || body[p] != '}' || skipJSONSpace(body, p+1) != len(body) {
		return nil, false
	}
	return entries, true
}

// skipJSONSpace returns the index of the first byte at or after p that is
// not JSON whitespace.
func skipJSONSpace(b []byte, p int) int {
	for p < len(b) && (b[p] == ' ' || b[p] == '\t' || b[p] == '\n' || b[p] == '\r') {
		p++
	}
	return p
}

// jsonValueEnd returns the index just after the JSON value starting at p
// in b, which is valid JSON.
func jsonValueEnd(b []byte, p int) int {
	switch b[p] {
	case '"':
		return jsonStringEnd(b, p)
	case '{', '[':
		depth := 0
		for p < len(b) {
			switch b[p] {
			case '"':
				p = jsonStringEnd(b, p)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return p + 1
				}
			}
			p++
		}
		return p
	default: // a number, true, false or null
		for p < len(b) {
			switch b[p] {
			case ',', ']', '}', ' ', '\t', '\n', '\r':
				return p
			}
			p++
		}
		return p
	}
}

// jsonStringEnd returns the index just after the string starting at p.
func jsonStringEnd(b []byte, p int) int {
	for p++; p < len(b); p++ {
		switch b[p] {
		case '\\':
			p++ // the escaped byte (a \u's hex digits need no care)
		case '"':
			return p + 1
		}
	}
	return p
}

// DecodeAppendLogInto decodes an append_log body into v, whose entries must
// be a list.
func DecodeAppendLogInto(body []byte, v AppendLogDecoder) error {
	// One typed decode: the body may hold 10,000 entries, so it is scanned
	// as few times as possible.
	err := unmarshalObject(body, v)
	if err == nil && v.LogBody().Entries != nil {
		return nil
	}
	// Not a list of entries (absent, null, another type, or a body that is
	// no object), or another field of v refused: the general path names
	// what is wrong with the entries, if anything.
	f, ferr := ParseObject(body)
	if ferr != nil {
		return ferr
	}
	if _, ferr = f.list("entries"); ferr != nil {
		return ferr
	}
	return err
}

// CommandMethods are the methods a command may relay to an agent: ours,
// and those PostHog's clients send (the answer to an agent's
// permission_request, a session config change, an MCP reply).
var CommandMethods = map[string]bool{"user_message": true, "cancel": true, "close": true,
	"permission_response": true, "set_config_option": true, "mcp_response": true}

// MaxMessageArtifactIDs bounds a user_message's params.artifact_ids: like
// start's pending_user_artifact_ids (MaxPendingArtifactIDs), they name
// artifacts of the run, and one message attaches at most one upload's
// worth (MaxArtifacts).
const MaxMessageArtifactIDs = MaxArtifacts

// ValidateCommand checks a command's method and params, wherever it comes
// from (REST, /ws): one of CommandMethods; params an object when sent;
// user_message with a non-empty params.content or a non-empty
// params.artifact_ids (a list of strings; PostHog's clients send a message
// that only attaches files), content a string and artifact_ids a list of
// at most MaxMessageArtifactIDs strings when sent, and steer, when sent, a
// boolean (it decides whether the message may be queued). It returns
// params with null as absent.
func ValidateCommand(method string, params json.RawMessage) (json.RawMessage, error) {
	if !CommandMethods[method] {
		return nil, invalid("method", "invalid_choice", "method must be one of user_message, cancel, close, permission_response, set_config_option, mcp_response.")
	}
	if len(params) > 0 && !isNull(params) && jsonKind(params) != "dict" {
		return nil, invalid("params", "invalid", "params must be an object.")
	}
	if isNull(params) {
		params = nil
	}
	if method == "user_message" {
		var p struct {
			Content     json.RawMessage `json:"content"`
			ArtifactIDs json.RawMessage `json:"artifact_ids"`
			Steer       json.RawMessage `json:"steer"`
		}
		if len(params) > 0 && json.Unmarshal(params, &p) != nil {
			return nil, invalid("params", "invalid", "params must be an object.")
		}
		var content string
		if p.Content != nil && !isNull(p.Content) && json.Unmarshal(p.Content, &content) != nil {
			return nil, invalid("params", "invalid", "params.content must be a string.")
		}
		var ids []string
		if p.ArtifactIDs != nil && !isNull(p.ArtifactIDs) && json.Unmarshal(p.ArtifactIDs, &ids) != nil {
			return nil, invalid("params", "invalid", "params.artifact_ids must be a list of strings.")
		}
		if len(ids) > MaxMessageArtifactIDs {
			return nil, invalid("params", "max_length", fmt.Sprintf("params.artifact_ids has more than %d elements.", MaxMessageArtifactIDs))
		}
		if content == "" && len(ids) == 0 {
			return nil, invalid("params", "required", "user_message needs a non-empty string params.content or a non-empty params.artifact_ids.")
		}
		if p.Steer != nil && !isNull(p.Steer) && jsonKind(p.Steer) != "bool" {
			return nil, invalid("params", "invalid", "params.steer must be a boolean.")
		}
	}
	return params, nil
}

// DecodeCommand decodes a REST command body: {"jsonrpc": "2.0", "method",
// "params"?, "id"?}, the method and params as ValidateCommand has them.
func DecodeCommand(body []byte) (method string, params json.RawMessage, id any, err error) {
	f, err := ParseObject(body)
	if err != nil {
		return "", nil, nil, err
	}
	if raw, ok := f["jsonrpc"]; ok {
		var v string
		if json.Unmarshal(raw, &v) != nil || v != "2.0" {
			return "", nil, nil, invalid("jsonrpc", "invalid", `jsonrpc must be "2.0".`)
		}
	}
	json.Unmarshal(f["method"], &method) // not a string: "", refused below
	if params, err = ValidateCommand(method, f["params"]); err != nil {
		return "", nil, nil, err
	}
	if raw, ok := f["id"]; ok {
		switch jsonKind(raw) {
		case "str", "number", "null":
			json.Unmarshal(raw, &id)
		default:
			return "", nil, nil, invalid("id", "invalid", "id must be a string, a number or null.")
		}
	}
	return method, params, id, nil
}

// originProducts are the accepted values of a task's origin_product.
var originProducts = map[string]bool{
	"user_created": true, "error_tracking": true, "eval_clusters": true, "slack": true,
	"support_queue": true, "session_summaries": true, "signal_report": true,
}

// repoPattern is GitHub's owner/name shape.
var repoPattern = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,38})/[a-z0-9._-]{1,100}$`)

// ValidOriginProduct reports whether v is one of a task's origin_product values.
func ValidOriginProduct(v string) bool { return originProducts[v] }

// DecodeNewTask decodes a task create body, with the defaults of the
// fields not sent (origin_product "user_created"; a title derived from the
// description, as PostHog's desktop app creates tasks from a prompt alone).
func DecodeNewTask(body []byte) (store.NewTask, error) {
	p, err := decodeTask(body, true)
	if err != nil {
		return store.NewTask{}, err
	}
	nt := store.NewTask{OriginProduct: "user_created"}
	if p.Description != nil {
		nt.Description = *p.Description
	}
	if p.Title != nil {
		nt.Title = *p.Title
	} else if nt.Title = store.DeriveTitle(nt.Description); nt.Title == "" {
		return store.NewTask{}, invalid("title", "required", "This field is required when the description is empty.")
	}
	if p.Internal != nil {
		nt.Internal = *p.Internal
	}
	if p.OriginProduct != nil {
		nt.OriginProduct = *p.OriginProduct
	}
	if p.Repository != nil {
		nt.Repository = *p.Repository
	}
	if p.JSONSchema != nil {
		nt.JSONSchema = *p.JSONSchema
	}
	return nt, nil
}

// DecodeTaskPatch decodes a task PATCH body.
func DecodeTaskPatch(body []byte) (store.TaskPatch, error) { return decodeTask(body, false) }

// decodeTask decodes the writable task fields of a create (a title
// not sent stays nil, for DecodeNewTask to derive) or PATCH; json_schema is compiled here, so a task never holds
// a schema that set_output could not use.
func decodeTask(body []byte, create bool) (store.TaskPatch, error) {
	var p store.TaskPatch
	f, err := ParseObject(body)
	if err != nil {
		return p, err
	}
	present, title, err := f.str("title", false)
	if err != nil {
		return p, err
	}
	switch {
	case present && strings.TrimSpace(*title) == "":
		return p, invalid("title", "blank", "This field may not be blank.")
	case present && utf8.RuneCountInString(*title) > MaxTitleLen:
		return p, invalid("title", "max_length", fmt.Sprintf("Ensure this field has no more than %d characters.", MaxTitleLen))
	}
	p.Title = title
	present, desc, err := f.str("description", true)
	if err != nil {
		return p, err
	}
	if present {
		if desc == nil {
			desc = new(string)
		}
		p.Description = desc
	}
	present, origin, err := f.str("origin_product", false)
	if err != nil {
		return p, err
	}
	if present {
		if !originProducts[*origin] {
			return p, invalid("origin_product", "invalid_choice", fmt.Sprintf("%q is not a valid choice.", *origin))
		}
		p.OriginProduct = origin
	}
	present, repo, err := f.str("repository", true)
	if err != nil {
		return p, err
	}
	if present {
		if repo != nil {
			lower := strings.ToLower(strings.TrimSpace(*repo))
			if lower == "" {
				repo = nil
			} else if !repoPattern.MatchString(lower) {
				return p, invalid("repository", "invalid_input", "Repository must be in the format 'organization/repository'.")
			} else {
				repo = &lower
			}
		}
		p.Repository = &repo
	}
	if raw, ok := f["json_schema"]; ok {
		var schema json.RawMessage
		if !isNull(raw) {
			if jsonKind(raw) != "dict" && jsonKind(raw) != "bool" {
				return p, invalid("json_schema", "invalid_input", "json_schema must be a JSON Schema object or null.")
			}
			if _, err := CompileSchema(raw); err != nil {
				return p, err // a *store.ValidationError with a fixed text
			}
			schema = append(json.RawMessage(nil), raw...)
		}
		p.JSONSchema = &schema
	}
	if p.Internal, err = f.boolean("internal"); err != nil {
		return p, err
	}
	if !create { // archived is the task list's; a new task is never archived
		if p.Archived, err = f.boolean("archived"); err != nil {
			return p, err
		}
	}
	return p, nil
}

// DecodeArtifacts decodes an artifacts upload: {"artifacts": [{name, type,
// content, content_encoding?, content_type?, source?}, ...]}; AddArtifacts
// checks the values.
func DecodeArtifacts(body []byte) ([]ArtifactInput, error) {
	f, err := ParseObject(body)
	if err != nil {
		return nil, err
	}
	list, err := f.list("artifacts")
	if err != nil {
		return nil, err
	}
	if list == nil {
		return nil, invalid("artifacts", "required", "This field is required.")
	}
	items := make([]ArtifactInput, len(list))
	for i, raw := range list {
		if jsonKind(raw) != "dict" {
			return nil, invalid("artifacts", "invalid", "Each artifact must be an object.")
		}
		var a struct {
			Name, Type, Content *string
			ContentEncoding     *string `json:"content_encoding"`
			ContentType         *string `json:"content_type"`
			Source              *string
			Metadata            json.RawMessage
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, invalid("artifacts", "invalid", "Artifact fields must be strings.")
		}
		if a.Name == nil || a.Type == nil || a.Content == nil {
			return nil, invalid("artifacts", "required", "Each artifact needs name, type and content.")
		}
		items[i] = ArtifactInput{Name: *a.Name, Type: *a.Type, Content: *a.Content, Source: a.Source, Metadata: metadataOf(a.Metadata)}
		if a.ContentEncoding != nil {
			items[i].ContentEncoding = *a.ContentEncoding
		}
		if a.ContentType != nil {
			items[i].ContentType = *a.ContentType
		}
	}
	return items, nil
}

// metadataOf is an artifact's metadata as given: nil when absent or null.
func metadataOf(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || isNull(raw) {
		return nil
	}
	return raw
}

// MaxRelayText is the longest text relay_message takes: a Slack message
// is cut at 40,000 characters, and a run's note to its thread is a few
// lines; 10,000 is the contract's limit.
const MaxRelayText = 10000

// DecodeRelay decodes a relay_message body: {"text": string of at most
// MaxRelayText characters}.
func DecodeRelay(body []byte) (string, error) {
	f, err := ParseObject(body)
	if err != nil {
		return "", err
	}
	var text string
	if jsonKind(f["text"]) != "str" || json.Unmarshal(f["text"], &text) != nil {
		return "", invalid("text", "required", "text must be a string.")
	}
	if utf8.RuneCountInString(text) > MaxRelayText {
		return "", invalid("text", "max_length", "Ensure this field has no more than 10000 characters.")
	}
	return text, nil
}
