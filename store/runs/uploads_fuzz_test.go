package runs

import "testing"

// FuzzDecodePrepareUploads: the prepare_upload body decoder never panics
// and either returns items or a 400; what it accepts was valid UTF-8.
func FuzzDecodePrepareUploads(f *testing.F) {
	for _, s := range append(fuzzSeeds,
		`{"artifacts":[{"name":"deploy.zip","type":"skill_bundle","size":100,"content_type":"application/zip","metadata":{"skill_name":"deploy","schema_version":1}}]}`,
		`{"artifacts":[{"name":"a","type":"plan","size":1.5}]}`,
		`{"artifacts":[{"name":"a","type":"plan","size":-1,"metadata":null,"source":null}]}`,
		`{"artifacts":[{"name":"a","type":"plan","size":99999999999999999999}]}`,
		`{"artifacts":[{"name":"a","type":"plan","size":1,"metadata":[1]}]}`) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		items, err := DecodePrepareUploads(b)
		if err != nil {
			wantBadRequest(t, b, err)
			return
		}
		wantUTF8(t, b)
		for _, it := range items {
			wantUTF8(t, b, it.Name, it.Type, it.ContentType, string(it.Metadata))
			if it.Metadata != nil && jsonKind(it.Metadata) == "null" {
				t.Fatalf("null metadata kept: %q", b)
			}
		}
	})
}

// FuzzDecodeFinalizeUploads: the finalize_upload body decoder never
// panics and either returns items or a 400; what it accepts was valid
// UTF-8.
func FuzzDecodeFinalizeUploads(f *testing.F) {
	for _, s := range append(fuzzSeeds,
		`{"artifacts":[{"id":"0190f6b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b","name":"a","type":"plan","storage_path":"artifacts/x","content_type":"text/plain","source":"agent"}]}`,
		`{"artifacts":[{"id":1,"name":"a","type":"plan","storage_path":"x"}]}`,
		`{"artifacts":[{"name":"a","type":"plan","storage_path":"x"}]}`) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		items, err := DecodeFinalizeUploads(b)
		if err != nil {
			wantBadRequest(t, b, err)
			return
		}
		wantUTF8(t, b)
		for _, it := range items {
			wantUTF8(t, b, it.ID, it.Name, it.Type, it.StoragePath, it.ContentType)
		}
	})
}
