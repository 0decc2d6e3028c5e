# The admin console route of deploy/portcullis.example.yaml: members of
# group admins only, and changes (anything but GET, HEAD, OPTIONS) only
# after multi-factor sign-in.
package portcullis.routes.admin

import data.portcullis.lib.groups
import data.portcullis.lib.methods
import data.portcullis.lib.mfa

default allow := false

allow if {
	groups.any_of({"admins"})
	methods.read_only
}

allow if {
	groups.any_of({"admins"})
	mfa.satisfied
}

reason := "sign-in required" if {
	not input.user.authenticated
} else := "requires group admins" if {
	not groups.any_of({"admins"})
} else := "changes require multi-factor sign-in: sign out and in again with a second factor" if {
	not allow
} else := "member of admins"
