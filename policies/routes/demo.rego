# The demo route of `portcullis dev`: engineers reach the demo app, and only
# admins reach its /admin area. Anonymous requests are denied (on a
# non-public route the proxy has already sent them to sign in).
package portcullis.routes.demo

import data.portcullis.lib.groups
import data.portcullis.lib.paths

# Only a literal true allows; anything else, undefined included, denies.
default allow := false

allow if {
	not paths.under("/admin")
	groups.any_of({"engineering", "admins"})
}

allow if {
	paths.under("/admin")
	groups.any_of({"admins"})
}

# reason is recorded in the audit event and shown on the deny page. The
# first matching line wins.
reason := "sign-in required" if {
	not input.user.authenticated
} else := "the /admin area is for group admins" if {
	paths.under("/admin")
	not allow
} else := "the demo app is for groups engineering or admins" if {
	not allow
} else := "admin: member of admins" if {
	paths.under("/admin")
} else := "member of engineering or admins"

# headers go to the demo app on allow, next to the X-Portcullis-* identity
# headers the proxy always sets.
headers := {"X-Demo-Role": role}

role := "admin" if groups.any_of({"admins"})

else := "member"
