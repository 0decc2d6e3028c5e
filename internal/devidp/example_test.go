package devidp_test

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/portcullis/portcullis/internal/devidp"
)

// Example wires the provider the way `portcullis dev` does: served under a
// path of the proxy's own origin, with the demo users and a client whose
// redirect URIs are Portcullis's callback and logout.
func Example() {
	const external = "https://localhost:8443"
	client, err := devidp.DemoClient(
		[]string{external + "/.portcullis/callback"},
		[]string{external + "/.portcullis/logout"},
	)
	if err != nil {
		panic(err)
	}
	idp, err := devidp.New(devidp.Options{
		Logger:  slog.New(slog.DiscardHandler),
		Issuer:  external + "/.devidp",
		Users:   devidp.DemoUsers(),
		Clients: []devidp.Client{client},
	})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/.devidp/", idp)

	// The relying party (the identity package) is configured with these.
	c, _ := idp.Client(devidp.DemoClientID)
	fmt.Println("issuer:", idp.Issuer())
	fmt.Println("client_id:", c.ID)
	fmt.Println("client_secret set:", len(c.Secret) >= 43)
	// Output:
	// issuer: https://localhost:8443/.devidp
	// client_id: portcullis-dev
	// client_secret set: true
}
