package rest

import _ "embed"

// openAPIDocument is the OpenAPI 3.1 description served at /api/schema.
//
//go:embed openapi.json
var openAPIDocument []byte
