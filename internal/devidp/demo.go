package devidp

import (
	"fmt"
	"slices"
)

// DemoClientID is the client_id `portcullis dev` registers for itself.
const DemoClientID = "portcullis-dev"

// DemoUsers returns the accounts of SPEC §1: alice (group engineering) and
// bob (groups engineering and admins), each with the user name as password,
// listed on the sign-in form.
func DemoUsers() []User {
	return []User{
		{Username: "alice", Password: "alice", Email: "alice@example.com", Name: "Alice", Groups: []string{"engineering"}, Hint: true},
		{Username: "bob", Password: "bob", Email: "bob@example.com", Name: "Bob", Groups: []string{"engineering", "admins"}, Hint: true},
	}
}

// DemoClient returns the client `portcullis dev` signs in with: ID
// DemoClientID and a secret generated now (256 random bits), so no two runs
// share one. The redirect URIs are registered as given (exact match).
func DemoClient(redirectURIs, postLogoutRedirectURIs []string) (Client, error) {
	c := Client{
		ID:                     DemoClientID,
		Secret:                 randomToken(),
		Name:                   "Portcullis dev",
		RedirectURIs:           slices.Clone(redirectURIs),
		PostLogoutRedirectURIs: slices.Clone(postLogoutRedirectURIs),
	}
	if err := validClient(c); err != nil {
		return Client{}, fmt.Errorf("devidp: demo client: %w", err)
	}
	return c, nil
}
