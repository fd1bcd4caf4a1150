package runs

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"runhub/store"
)

// Limits on a task's json_schema, checked before the compiler sees it: the
// compiler's time grows about cubically with nesting (depth 1,500 in 15 KB
// took 5.6 s) and cannot be interrupted, so only a bounded input keeps a
// compile cheap.
const (
	// MaxSchemaBytes is far above any hand-written output schema (PostHog's
	// biggest is a few KiB) and small enough that a compile stays in
	// milliseconds.
	MaxSchemaBytes = 64 << 10
	// MaxSchemaDepth counts JSON nesting (objects and arrays), i.e. about
	// 16 levels of nested schemas: deeper than a real output shape, shallow
	// enough that the compiler's superlinear cost stays negligible.
	MaxSchemaDepth = 32
	// MaxSchemaExpanded bounds the schema once every $ref is followed: 20
	// definitions that each reference the next one twice make 2^20 checks
	// of every value (2.6 s per set_output; 30 of them, 45 minutes) in a
	// 1 KB schema. A 64 KiB schema without such sharing has a few thousand
	// subschemas, so 10,000 refuses no honest schema.
	MaxSchemaExpanded = 10_000
	// schemaRecursionLaps is how deep a recursive $ref is unrolled when the
	// schema is counted: as deep as MaxSchemaDepth, so that a recursion
	// that branches at all (2^32 checks) is over MaxSchemaExpanded however
	// many levels each lap spans, while a linear one (a tree of children)
	// costs 32 times its lap.
	schemaRecursionLaps = 32
	// maxCachedSchemas bounds the compiled schemas a Service keeps: one
	// of MaxSchemaBytes (2,500 properties) holds about 2.2 MB once
	// compiled, so the cache stays under 150 MB at worst, while a node
	// rarely takes outputs for more than a few dozen schemas at a time.
	maxCachedSchemas = 64
	// maxSchemaError is the number of characters of an output validation
	// message returned to the client.
	maxSchemaError = 1000
)

// schemaURL is where the task's schema lives for the compiler. It is a URN,
// so a relative $ref cannot resolve against a file or a host.
const schemaURL = "urn:runhub:task-output-schema"

// The texts of a refused json_schema are fixed: a compiler message could
// quote a resource it loaded (which is why nothing is ever loaded) or the
// first bytes of one.
var (
	errSchemaTooLarge = &store.ValidationError{Attr: "json_schema", Code: "max_length",
		Detail: fmt.Sprintf("json_schema must be at most %d bytes.", MaxSchemaBytes)}
	errSchemaTooDeep = &store.ValidationError{Attr: "json_schema", Code: "max_depth",
		Detail: fmt.Sprintf("json_schema must not nest deeper than %d levels.", MaxSchemaDepth)}
	errSchemaNotJSON = &store.ValidationError{Attr: "json_schema", Code: "invalid_input",
		Detail: "json_schema is not valid JSON."}
	errSchemaExternal = &store.ValidationError{Attr: "json_schema", Code: "invalid_input",
		Detail: `json_schema may only refer to itself: a $ref or $schema must be "#..." or a JSON Schema draft.`}
	errSchemaExpands = &store.ValidationError{Attr: "json_schema", Code: "invalid_input",
		Detail: fmt.Sprintf("json_schema must not expand to more than %d subschemas when its $refs are followed.", MaxSchemaExpanded)}
	errSchemaInvalid = &store.ValidationError{Attr: "json_schema", Code: "invalid_input",
		Detail: "json_schema is not a valid JSON Schema."}
)

// errNoExternal is what noLoader answers for every URL.
var errNoExternal = errors.New("external schema references are not allowed")

// noLoader refuses every URL without touching it: no file is opened (not
// even a FIFO that would block), no host is contacted. The draft
// metaschemas are built into the compiler and never reach a loader.
type noLoader struct{}

func (noLoader) Load(string) (any, error) { return nil, errNoExternal }

// CompileSchema checks a task's json_schema against MaxSchemaBytes and
// MaxSchemaDepth, then compiles it with every external reference refused.
// Every error is a *store.ValidationError on attr json_schema with a fixed
// text.
func CompileSchema(schema json.RawMessage) (*jsonschema.Schema, error) {
	if len(schema) > MaxSchemaBytes {
		return nil, errSchemaTooLarge
	}
	if err := checkDepth(schema, MaxSchemaDepth); err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schema))
	if err != nil {
		return nil, errSchemaNotJSON
	}
	if !refsInside(doc) {
		return nil, errSchemaExternal
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(noLoader{})
	if err := c.AddResource(schemaURL, doc); err != nil {
		return nil, errSchemaInvalid
	}
	sch, err := c.Compile(schemaURL)
	if err != nil {
		if errors.Is(err, errNoExternal) {
			return nil, errSchemaExternal
		}
		var lue *jsonschema.LoadURLError
		var use *jsonschema.UnsupportedURLSchemeError
		if errors.As(err, &lue) || errors.As(err, &use) {
			return nil, errSchemaExternal
		}
		return nil, errSchemaInvalid
	}
	if expandedSize(sch, map[*jsonschema.Schema]int{}) > MaxSchemaExpanded {
		return nil, errSchemaExpands
	}
	return sch, nil
}

// expandedSize counts the subschemas of s as validation visits them, every
// $ref followed, capped just above MaxSchemaExpanded. A recursive $ref (back
// to a schema on the current path) is followed schemaRecursionLaps times:
// a recursion that visits one schema per lap (a list of children) stays
// small, one that branches (two $refs back per lap, which costs 2^depth
// checks of a deep enough output) passes the cap and is refused. Nothing is
// memoised, since a schema's count depends on the path to it; the cap
// bounds the walk itself.
func expandedSize(s *jsonschema.Schema, onPath map[*jsonschema.Schema]int) int {
	if s == nil {
		return 0
	}
	if onPath[s] >= schemaRecursionLaps {
		return 1
	}
	onPath[s]++
	n := 1
	add := func(c *jsonschema.Schema) {
		if n <= MaxSchemaExpanded {
			n += expandedSize(c, onPath)
		}
	}
	addAny := func(v any) { // the fields that hold a schema, a bool or a list
		switch v := v.(type) {
		case *jsonschema.Schema:
			add(v)
		case []*jsonschema.Schema:
			for _, c := range v {
				add(c)
			}
		}
	}
	add(s.Ref)
	add(s.RecursiveRef)
	if s.DynamicRef != nil {
		add(s.DynamicRef.Ref)
	}
	for _, list := range [][]*jsonschema.Schema{s.AllOf, s.AnyOf, s.OneOf, s.PrefixItems} {
		for _, c := range list {
			add(c)
		}
	}
	for _, c := range []*jsonschema.Schema{s.Not, s.If, s.Then, s.Else, s.PropertyNames, s.UnevaluatedProperties,
		s.Contains, s.Items2020, s.UnevaluatedItems, s.ContentSchema} {
		add(c)
	}
	for _, c := range s.Properties {
		add(c)
	}
	for _, c := range s.PatternProperties {
		add(c)
	}
	for _, c := range s.DependentSchemas {
		add(c)
	}
	for _, v := range s.Dependencies {
		addAny(v)
	}
	addAny(s.AdditionalProperties)
	addAny(s.Items)
	addAny(s.AdditionalItems)
	onPath[s]--
	return min(n, MaxSchemaExpanded+1)
}

// refKeywords hold a reference; dataKeywords hold instance data (which
// may well contain a "$ref" member that means nothing); nameKeywords map
// names to subschemas.
var (
	refKeywords  = map[string]bool{"$ref": true, "$dynamicRef": true, "$recursiveRef": true}
	dataKeywords = map[string]bool{"const": true, "enum": true, "default": true, "examples": true}
	nameKeywords = map[string]bool{"properties": true, "patternProperties": true, "$defs": true,
		"definitions": true, "dependentSchemas": true, "dependencies": true}
)

// refsInside reports whether every reference in the schema v is a
// fragment of the document itself ("#", "#/json/pointer", "#anchor").
// The compiler is never asked to resolve anything else: a relative
// reference would otherwise resolve against the document's own URL (or a
// "$id" of the sender's choosing, such as a file:// directory).
func refsInside(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, m := range v {
			switch {
			case refKeywords[k]:
				if s, ok := m.(string); ok && !strings.HasPrefix(s, "#") {
					return false
				}
			case dataKeywords[k]:
				continue
			case nameKeywords[k]:
				if names, ok := m.(map[string]any); ok {
					for _, sub := range names {
						if !refsInside(sub) {
							return false
						}
					}
					continue
				}
			}
			if !refsInside(m) {
				return false
			}
		}
	case []any:
		for _, m := range v {
			if !refsInside(m) {
				return false
			}
		}
	}
	return true
}

// checkDepth scans raw token by token and fails as soon as objects and
// arrays nest deeper than limit; it reads no further than that point.
func checkDepth(raw []byte, limit int) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	depth := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return errSchemaNotJSON
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if depth++; depth > limit {
				return errSchemaTooDeep
			}
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
}

// schemaCache holds compiled schemas by the SHA-256 of their bytes, so a
// task's schema compiles once however many outputs are set, and a PATCH of
// the schema simply misses. At most maxCachedSchemas are kept, least
// recently used first out.
type schemaCache struct {
	mu       sync.Mutex
	byHash   map[[sha256.Size]byte]*list.Element
	order    list.List // of *cachedSchema, most recently used in front
	compiles atomic.Int64
}

type cachedSchema struct {
	hash [sha256.Size]byte
	sch  *jsonschema.Schema
	err  error
}

// get returns the compiled schema of raw, compiling it on a miss. Two
// concurrent misses for one schema may both compile; the result is the same.
func (c *schemaCache) get(raw json.RawMessage) (*jsonschema.Schema, error) {
	h := sha256.Sum256(raw)
	c.mu.Lock()
	if el, ok := c.byHash[h]; ok {
		c.order.MoveToFront(el)
		e := el.Value.(*cachedSchema)
		c.mu.Unlock()
		return e.sch, e.err
	}
	c.mu.Unlock()

	c.compiles.Add(1)
	sch, err := CompileSchema(raw)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byHash == nil {
		c.byHash = make(map[[sha256.Size]byte]*list.Element)
	}
	if _, ok := c.byHash[h]; !ok {
		c.byHash[h] = c.order.PushFront(&cachedSchema{hash: h, sch: sch, err: err})
		for c.order.Len() > maxCachedSchemas {
			last := c.order.Back()
			c.order.Remove(last)
			delete(c.byHash, last.Value.(*cachedSchema).hash)
		}
	}
	return sch, err
}

// validateOutput checks output against the task's schema; the error wraps
// ErrOutputInvalid with a short human reason.
func (s *Service) validateOutput(schema json.RawMessage, output map[string]json.RawMessage) error {
	sch, err := s.schemas.get(schema)
	if err != nil {
		return fmt.Errorf("%w: the task's json_schema is invalid", ErrOutputInvalid)
	}
	b, err := json.Marshal(output)
	if err != nil {
		return fmt.Errorf("%w: output is not valid JSON", ErrOutputInvalid)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%w: output is not valid JSON", ErrOutputInvalid)
	}
	if err := sch.Validate(inst); err != nil {
		msg := err.Error()
		if len(msg) > maxSchemaError {
			// Cut on a rune boundary: the message goes back as JSON text.
			cut := maxSchemaError
			for cut > 0 && !utf8.RuneStart(msg[cut]) {
				cut--
			}
			msg = msg[:cut] + "…"
		}
		return fmt.Errorf("%w: %s", ErrOutputInvalid, msg)
	}
	return nil
}
