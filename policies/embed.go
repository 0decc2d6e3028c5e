// Package policies carries the Rego policies shipped with Portcullis (lib/,
// routes/ and their tests) inside the binary, so that `portcullis dev` has
// them wherever it runs. The files themselves are the product; this package
// only embeds them.
package policies

import (
	"embed"
	"io/fs"
)

//go:embed README.md lib routes
var files embed.FS

// FS returns the shipped policy tree: README.md, lib/*.rego and
// routes/*.rego, tests included, at the paths they have in the repository.
func FS() fs.FS { return files }
