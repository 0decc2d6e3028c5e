package policy

import (
	"context"
	"testing"
)

// benchCases is one representative request per shipped route package.
func benchCases() []struct {
	pkg string
	in  *Input
} {
	finance := userSpec{sub: "fin", groups: []string{"finance"}, amr: []any{"pwd", "otp"}}
	hr := userSpec{sub: "hr", groups: []string{"hr"}}
	partner := userSpec{sub: "pat", email: "pat@partner.example", groups: []string{}}
	analyst := userSpec{sub: "ana", groups: []string{"analysts"}}
	return []struct {
		pkg string
		in  *Input
	}{
		{"portcullis.routes.demo", input(alice, "GET", "/reports/q3")},
		{"portcullis.routes.admin", input(bob, "GET", "/users")},
		{"portcullis.routes.partners", input(partner, "GET", "/")},
		{"portcullis.routes.docs", input(alice, "GET", "/guide")},
		{"portcullis.routes.api", input(analyst, "GET", "/api/v1/reports/q3")},
		{"portcullis.routes.payroll", input(hr, "GET", "/")},
		{"portcullis.routes.internal", input(alice, "GET", "/")},
		{"portcullis.routes.finance", input(finance, "GET", "/")},
	}
}

func BenchmarkDecision(b *testing.B) {
	e, err := NewEngine(Config{Dir: shippedDir}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := e.Reload(ctx); err != nil {
		b.Fatal(err)
	}
	for _, c := range benchCases() {
		if err := e.SetPackages([]string{c.pkg}); err != nil {
			b.Fatal(err)
		}
		name := c.pkg[len("portcullis.routes."):]
		b.Run(name, func(b *testing.B) {
			if d := e.Eval(ctx, c.pkg, c.in); !d.Allow {
				b.Fatalf("benchmark request denied: %+v", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				e.Eval(ctx, c.pkg, c.in)
			}
		})
	}
}
