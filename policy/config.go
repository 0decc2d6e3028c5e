package policy

import (
	"strings"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
)

// Defaults for the policy section of the configuration file.
const (
	DefaultDir             = "./policies"
	DefaultDecisionTimeout = 50 * time.Millisecond
)

// Config is the `policy:` section of the configuration file (SPEC §2).
type Config struct {
	// Dir holds the Rego modules (every .rego file, recursively; *_test.rego
	// files are tests and never serve decisions) and optional data.json or
	// data.yaml documents, each mounted at its directory's path under data.
	Dir string `yaml:"dir"`
	// DecisionTimeout bounds one evaluation; a decision that takes longer is
	// an error, and errors deny.
	DecisionTimeout time.Duration `yaml:"decision_timeout"`
	// DecisionCache is how many decisions to remember per route package
	// (default 10000; 0 turns remembering off). A package's decision is
	// remembered only when it cannot change between two requests with the
	// same values of the input fields the package reads: packages that
	// call time.now_ns, http.send, rand.intn and the like, or read
	// input.request.time or input.request.id, are evaluated every time.
	// A reload starts from an empty cache.
	DecisionCache *int `yaml:"decision_cache"`
}

// SetDefaults fills the fields left empty: dir ./policies, decision_timeout
// 50ms, decision_cache 10000.
func (c *Config) SetDefaults() {
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.DecisionTimeout == 0 {
		c.DecisionTimeout = DefaultDecisionTimeout
	}
	if c.DecisionCache == nil {
		n := DefaultDecisionCache
		c.DecisionCache = &n
	}
}

// CacheSize is DecisionCache, or the default when unset.
func (c *Config) CacheSize() int {
	if c.DecisionCache == nil {
		return DefaultDecisionCache
	}
	return *c.DecisionCache
}

// Validate records every problem with c in p under path (normally "policy").
// It has no side effects and does not touch the file system: whether the
// directory exists and compiles is checked by Load, which `portcullis check`
// runs separately.
func (c *Config) Validate(p *confkit.Problems, path string) {
	if strings.TrimSpace(c.Dir) == "" {
		p.Add(confkit.Join(path, "dir"), "is required: the directory holding the .rego files, such as ./policies")
	}
	confkit.RequireDuration(p, confkit.Join(path, "decision_timeout"), c.DecisionTimeout)
	if c.DecisionCache != nil && *c.DecisionCache < 0 {
		p.Add(confkit.Join(path, "decision_cache"), "%d is negative: give how many decisions to remember per route package (10000 is the default), or 0 to evaluate every request", *c.DecisionCache)
	}
	if c.DecisionTimeout > 10*time.Second {
		p.Add(confkit.Join(path, "decision_timeout"), "%s is far too long for a per-request decision: keep it under 10s (50ms is the default)", c.DecisionTimeout)
	}
}

// ValidatePackage records a problem at path when name is not a valid Rego
// package path for a route (such as portcullis.routes.admin). It does not
// check that the package exists; (*Set).Prepare does.
func ValidatePackage(p *confkit.Problems, path, name string) {
	if name == "" {
		p.Add(path, "is required: name the Rego package holding the route's rules, such as portcullis.routes.admin")
		return
	}
	if _, err := packageRef(name); err != nil {
		p.Add(path, "%v", err)
	}
}
