package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/portcullis/portcullis/internal/confkit"
)

// Clock tells the time. Policies see it through time.now_ns(); the engine
// stamps loads with it.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

var _ Clock = systemClock{}

func (systemClock) Now() time.Time { return time.Now() }

// LoadOptions tune Load. The zero value is usable: decisions time out after
// DefaultDecisionTimeout and time.now_ns() reads the system clock.
type LoadOptions struct {
	// DecisionTimeout bounds one evaluation; zero means
	// DefaultDecisionTimeout.
	DecisionTimeout time.Duration
	// Clock feeds time.now_ns(); nil means the system clock.
	Clock Clock
	// DecisionCache is how many decisions to remember per route package
	// (see decisionCache); zero means none.
	DecisionCache int
}

// Set is one compiled, immutable load of a policy directory. It is safe for
// concurrent use: Eval may run from any number of goroutines, also while
// Prepare adds packages.
type Set struct {
	dir      string
	revision string
	loadedAt time.Time
	files    []string
	timeout  time.Duration
	clock    Clock
	cacheMax int // decisions remembered per package; 0: none

	compiler *ast.Compiler
	store    storage.Store
	packages map[string]bool // package paths without the "data." prefix
	keys     *inputKeys
	use      fieldMask // the input fields the modules can read

	mu      sync.Mutex                        // serializes writers of queries
	queries atomic.Pointer[map[string]*query] // copy-on-write; readers never lock
}

// query is one route package, prepared for evaluation.
type query struct {
	pkg    string
	pq     rego.PreparedEvalQuery
	direct map[string]bool // rules bound directly rather than as [x | x := rule]
	// cache remembers decisions; nil when the package's decisions may not
	// be cached (uncached says why) or caching is off.
	cache    *decisionCache
	uncached string
	// controls: see Decision.Controls.
	controls []string
}

// Load reads every .rego file under dir (recursively; files ending in
// _test.rego are tests and are left out, as are names starting with "." or
// "#", which editors use for swap and lock files) and every data.json,
// data.yaml or data.yml, mounted under data at its directory's path relative
// to dir, and compiles them together once.
//
// A file that does not parse or a module that does not compile gives a
// *CompileError listing every problem with its file:line. The revision is
// "sha256:" followed by the hex SHA-256 over the sorted relative file paths and
// their contents, so it changes exactly when what is served changes.
func Load(ctx context.Context, dir string, opts LoadOptions) (*Set, error) {
	if opts.DecisionTimeout <= 0 {
		opts.DecisionTimeout = DefaultDecisionTimeout
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	files, err := readDir(dir)
	if err != nil {
		return nil, err
	}

	h := sha256.New()
	modules := map[string]*ast.Module{}
	data := map[string]any{}
	cerr := &CompileError{Dir: dir}
	popts := ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, f.rel)
		// Length-prefix both parts so that no two different file sets hash alike.
		fmt.Fprintf(h, "%d:%s\n%d:", len(f.rel), f.rel, len(f.content))
		h.Write(f.content)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("policy: load %s: %w", dir, err)
		}
		// Modules and problems carry the path as the operator knows it
		// (policies/routes/app.rego), so that file:line leads to the file.
		path := filepath.Join(dir, filepath.FromSlash(f.rel))
		switch {
		case strings.HasSuffix(f.rel, ".rego"):
			m, err := ast.ParseModuleWithOpts(path, string(f.content), popts)
			if err != nil {
				cerr.addAST(path, err)
				continue
			}
			if m == nil {
				cerr.Problems = append(cerr.Problems, Problem{File: path, Message: "empty module: a .rego file needs a package declaration"})
				continue
			}
			modules[path] = m
		default:
			var doc any
			if err := util.Unmarshal(f.content, &doc); err != nil {
				cerr.Problems = append(cerr.Problems, Problem{File: path, Message: fmt.Sprintf("not valid JSON or YAML: %v", err)})
				continue
			}
			if err := mountData(data, dataPath(f.rel), doc); err != nil {
				cerr.Problems = append(cerr.Problems, Problem{File: path, Message: err.Error()})
			}
		}
	}
	if len(cerr.Problems) > 0 {
		return nil, cerr
	}
	if len(modules) == 0 {
		return nil, fmt.Errorf("policy: no .rego files in %s: %w", dir, ErrNoPolicies)
	}

	store := inmem.NewFromObjectWithOpts(data, inmem.OptRoundTripOnWrite(false), inmem.OptReturnASTValuesOnRead(true))
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: load %s: %w", dir, err)
	}
	compiler := ast.NewCompiler().
		WithDefaultRegoVersion(ast.RegoV1).
		WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn)).
		WithEnablePrintStatements(false)
	compiler.Compile(modules)
	store.Abort(ctx, txn)
	if compiler.Failed() {
		for _, e := range compiler.Errors {
			cerr.addError(e)
		}
		return nil, cerr
	}

	pkgs := map[string]bool{}
	for _, m := range compiler.Modules {
		pkgs[strings.TrimPrefix(m.Package.Path.String(), "data.")] = true
	}
	s := &Set{
		dir:      dir,
		revision: "sha256:" + hex.EncodeToString(h.Sum(nil)),
		loadedAt: opts.Clock.Now(),
		files:    names,
		timeout:  opts.DecisionTimeout,
		clock:    opts.Clock,
		cacheMax: max(opts.DecisionCache, 0),
		compiler: compiler,
		store:    store,
		packages: pkgs,
		keys:     newInputKeys(),
		use:      inputUseOfModules(compiler.Modules),
	}
	s.queries.Store(&map[string]*query{})
	return s, nil
}

// Revision identifies the loaded files: "sha256:<hex>".
func (s *Set) Revision() string { return s.revision }

// Dir is the directory the set was loaded from.
func (s *Set) Dir() string { return s.dir }

// LoadedAt is when the set was compiled, by the clock given to Load.
func (s *Set) LoadedAt() time.Time { return s.loadedAt }

// Files lists the loaded files (tests excluded), relative to Dir, sorted.
func (s *Set) Files() []string { return slices.Clone(s.files) }

// Packages lists the Rego packages the set defines (without "data."), sorted.
func (s *Set) Packages() []string {
	out := make([]string, 0, len(s.packages))
	for p := range s.packages {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// HasPackage reports whether a module of the set declares package pkg
// ("portcullis.routes.admin"; a leading "data." is accepted).
func (s *Set) HasPackage(pkg string) bool {
	return s.packages[strings.TrimPrefix(pkg, "data.")]
}

// Prepare readies one evaluation query per package so that the first
// request pays no compilation. It returns a *MissingPackagesError naming
// every package that no module declares, an error wrapping ErrNoAllowRule
// for a package without an allow rule, and an error for a package name that
// is not a valid Rego path. Packages prepared before stay prepared.
func (s *Set) Prepare(ctx context.Context, pkgs []string) error {
	var missing []string
	var errs []error
	for _, p := range pkgs {
		if _, err := packageRef(p); err != nil {
			errs = append(errs, err)
			continue
		}
		if !s.HasPackage(p) {
			missing = append(missing, strings.TrimPrefix(p, "data."))
			continue
		}
		if !s.hasAllowRule(p) {
			errs = append(errs, fmt.Errorf("policy: package %s has no allow rule, so it would deny every request: %w", strings.TrimPrefix(p, "data."), ErrNoAllowRule))
			continue
		}
		if _, err := s.prepared(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	if len(missing) > 0 {
		errs = append(errs, &MissingPackagesError{Dir: s.dir, Packages: missing})
	}
	return errors.Join(errs...)
}

// hasAllowRule reports whether package pkg defines an allow rule.
func (s *Set) hasAllowRule(pkg string) bool {
	ref, err := packageRef(pkg)
	if err != nil {
		return false
	}
	return len(decisionRuleDefs(s.compiler, ref, ruleAllow)) > 0
}

// ValidatePackage records a problem at path (such as routes[2].policy) when
// pkg is not a valid package name, no module in the set declares it, or it
// has no allow rule.
func (s *Set) ValidatePackage(p *confkit.Problems, path, pkg string) {
	if _, err := packageRef(pkg); err != nil {
		p.Add(path, "%v", err)
		return
	}
	if !s.HasPackage(pkg) {
		var routes []string
		for _, name := range s.Packages() {
			if s.hasAllowRule(name) {
				routes = append(routes, name)
			}
		}
		p.Add(path, "package %s not found in policy.dir (%s); packages with an allow rule: %s",
			strings.TrimPrefix(pkg, "data."), s.dir, strings.Join(routes, ", "))
		return
	}
	if !s.hasAllowRule(pkg) {
		p.Add(path, "package %s has no allow rule, so it would deny every request", strings.TrimPrefix(pkg, "data."))
	}
}

// prepared returns the prepared query for pkg, preparing it on first use.
func (s *Set) prepared(ctx context.Context, pkg string) (*query, error) {
	pkg = strings.TrimPrefix(pkg, "data.")
	if q := (*s.queries.Load())[pkg]; q != nil {
		return q, nil
	}
	if !s.packages[pkg] {
		return nil, fmt.Errorf("policy: package %s not found in %s: %w", pkg, s.dir, ErrPackageNotFound)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.queries.Load()
	if q := old[pkg]; q != nil {
		return q, nil
	}
	ref, err := packageRef(pkg)
	if err != nil {
		return nil, err
	}
	body, direct, err := decisionQuery(s.compiler, ref)
	if err != nil {
		return nil, err
	}
	pq, err := rego.New(
		rego.ParsedQuery(body),
		rego.Compiler(s.compiler),
		rego.Store(s.store),
		rego.StoreReadAST(true),
		rego.SetRegoVersion(ast.RegoV1),
		rego.GenerateJSON(keepTerm),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: prepare package %s: %w", pkg, err)
	}
	q := &query{pkg: pkg, pq: pq, direct: direct, controls: headerNames(s.compiler, ref)}
	if plan := planCache(s.compiler, ref); plan.why != "" {
		q.uncached = plan.why
	} else if s.cacheMax > 0 {
		q.cache = newDecisionCache(plan.use, s.cacheMax)
	} else {
		q.uncached = "policy.decision_cache is 0"
	}
	next := make(map[string]*query, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[pkg] = q
	s.queries.Store(&next)
	return q, nil
}

// keepTerm leaves query results as AST terms: decisions are read from the
// terms directly, which saves converting them to Go values.
func keepTerm(t *ast.Term, _ *rego.EvalContext) (any, error) { return t, nil }

// Rule names read from a route package (SPEC §5), in the order the
// decision query binds them.
const (
	ruleAllow   = "allow"
	ruleReason  = "reason"
	ruleStatus  = "status"
	ruleHeaders = "headers"
)

var decisionRules = [...]string{ruleAllow, ruleReason, ruleStatus, ruleHeaders}

// decisionQuery builds the query that reads a package's decision rules,
// binding each to the variable of the same name. Only rules the package
// defines are read, each by its exact reference, so that helper rules and
// packages nested below are not evaluated. A rule with a default value is
// never undefined and is bound directly; any other rule is wrapped in an
// array comprehension ([x | x := data.pkg.reason]), which is empty when the
// rule is undefined instead of making the whole query undefined.
// (Evaluating data.<pkg> whole, or iterating over its keys, measured three
// to five times slower.)
func decisionQuery(c *ast.Compiler, pkg ast.Ref) (ast.Body, map[string]bool, error) {
	var parts []string
	direct := map[string]bool{}
	for _, name := range decisionRules {
		ref := pkg.Append(ast.StringTerm(name))
		rules := decisionRuleDefs(c, pkg, name)
		if len(rules) == 0 {
			continue
		}
		hasDefault := false
		for _, r := range rules {
			if r.Default {
				hasDefault = true
			}
		}
		if hasDefault {
			parts = append(parts, fmt.Sprintf("%s := %s", name, ref))
			direct[name] = true
		} else {
			parts = append(parts, fmt.Sprintf("%s := [x | x := %s]", name, ref))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "true")
	}
	body, err := ast.ParseBodyWithOpts(strings.Join(parts, "; "), ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		return nil, nil, fmt.Errorf("policy: build query for %s: %w", pkg, err)
	}
	return body, direct, nil
}

// decisionRuleDefs returns the rules of package pkg that define the
// decision rule name: `headers := {...}` as well as rules with a reference
// head such as `headers["X-Team"] := v`, which an exact lookup misses.
func decisionRuleDefs(c *ast.Compiler, pkg ast.Ref, name string) []*ast.Rule {
	var defs []*ast.Rule
	for _, r := range c.GetRules(pkg.Append(ast.StringTerm(name))) {
		if r.Module != nil && r.Module.Package.Path.Equal(pkg) {
			defs = append(defs, r)
		}
	}
	return defs
}

// headerNames returns the header names package pkg's headers rule can set
// literally: the keys of reference heads (headers["X-Role"] := v) and of
// object literals in a rule defining the whole object (headers := {...},
// which the compiler moves into the body). Names computed at evaluation
// time are not known here; the proxy removes client copies of the names a
// decision sets as well.
func headerNames(c *ast.Compiler, pkg ast.Ref) []string {
	seen := map[string]bool{}
	add := func(name string) {
		// Only names a decision could actually set (see readHeaders):
		// a refused name is ignored there, and must not cost the
		// upstream the proxy's own header of that name here.
		if validToken(name) && refusedHeader(http.CanonicalHeaderKey(strings.ReplaceAll(name, "_", "-"))) == "" {
			seen[http.CanonicalHeaderKey(name)] = true
		}
	}
	for _, r := range decisionRuleDefs(c, pkg, ruleHeaders) {
		if ref := r.Head.Ref(); len(ref) >= 2 {
			if s, ok := ref[1].Value.(ast.String); ok {
				add(string(s))
			}
			continue
		}
		ast.WalkTerms(r, func(t *ast.Term) bool {
			if obj, ok := t.Value.(ast.Object); ok {
				obj.Foreach(func(k, _ *ast.Term) {
					if s, ok := k.Value.(ast.String); ok {
						add(string(s))
					}
				})
			}
			return false
		})
	}
	return slices.Sorted(maps.Keys(seen))
}

// packageRef turns "portcullis.routes.admin" (or "data.portcullis.routes.admin")
// into the reference data.portcullis.routes.admin.
func packageRef(pkg string) (ast.Ref, error) {
	name := strings.TrimPrefix(pkg, "data.")
	if name == "" {
		return nil, fmt.Errorf("policy: empty package name: give a Rego package such as portcullis.routes.admin")
	}
	ref := ast.Ref{ast.DefaultRootDocument}
	for _, part := range strings.Split(name, ".") {
		if !isIdent(part) {
			return nil, fmt.Errorf("policy: %q is not a Rego package name: use dot-separated identifiers such as portcullis.routes.admin", pkg)
		}
		ref = append(ref, ast.StringTerm(part))
	}
	return ref, nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// policyFile is one file of a policy directory.
type policyFile struct {
	rel     string // slash-separated path relative to the directory
	content []byte
}

// readDir reads the files Load serves, sorted by relative path.
func readDir(dir string) ([]policyFile, error) {
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("policy: policy directory: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("policy: %s is not a directory", dir)
	}
	var files []policyFile
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if path != dir && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "#")) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !servedFile(name) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		files = append(files, policyFile{rel: filepath.ToSlash(rel), content: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", dir, err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].rel < files[j].rel })
	return files, nil
}

// servedFile reports whether a file name takes part in serving decisions.
func servedFile(name string) bool {
	switch name {
	case "data.json", "data.yaml", "data.yml":
		return true
	}
	return strings.HasSuffix(name, ".rego") && !strings.HasSuffix(name, "_test.rego")
}

// dataPath is the path under data at which a data file is mounted: its
// directory relative to the policy directory.
func dataPath(rel string) []string {
	d := filepath.ToSlash(filepath.Dir(rel))
	if d == "." || d == "" {
		return nil
	}
	return strings.Split(d, "/")
}

// mountData places doc at path inside root, merging objects; two files that
// give the same key different non-object values conflict.
func mountData(root map[string]any, path []string, doc any) error {
	obj, ok := doc.(map[string]any)
	if !ok {
		return fmt.Errorf("a data file must hold an object at its top level, not %T", doc)
	}
	cur := root
	for i, p := range path {
		next, exists := cur[p]
		if !exists {
			m := map[string]any{}
			cur[p] = m
			cur = m
			continue
		}
		m, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("data path %s is already a non-object value", strings.Join(path[:i+1], "."))
		}
		cur = m
	}
	return mergeInto(cur, obj, strings.Join(path, "."))
}

func mergeInto(dst, src map[string]any, at string) error {
	for k, v := range src {
		here := k
		if at != "" {
			here = at + "." + k
		}
		old, exists := dst[k]
		if !exists {
			dst[k] = v
			continue
		}
		om, ok1 := old.(map[string]any)
		nm, ok2 := v.(map[string]any)
		if !ok1 || !ok2 {
			return fmt.Errorf("data key %s is defined by more than one data file", here)
		}
		if err := mergeInto(om, nm, here); err != nil {
			return err
		}
	}
	return nil
}
