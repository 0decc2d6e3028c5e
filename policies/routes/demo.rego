# The demo route of `portcullis dev`: engineers reach the demo app, and only
# admins reach its /admin area. Anonymous requests are denied (on a
# non-public route the proxy has already sent them to sign in).
package portcullis.routes.demo

import data.portcullis.lib.groups
import data.portcullis.lib.paths

# Only a literal true allows; anything else, undefined included, denies.
default allow := false

allow if {
	not admin_area
	engineer
}

allow if {
	admin_area
	admin
}

# Facts are rules rather than repeated function calls: OPA evaluates a rule
# once per request and reuses it in allow, reason and headers.
admin_area if paths.under("/admin")

admin if groups.any_of({"admins"})

engineer if groups.any_of({"engineering", "admins"})

# reason is recorded in the audit event and shown on the deny page. The
# first matching branch wins.
reason := "sign-in required" if {
	not input.user.authenticated
} else := "the /admin area is for group admins" if {
	admin_area
	not admin
} else := "the demo app is for groups engineering or admins" if {
	not allow
} else := "admin: member of admins" if {
	admin_area
} else := "member of engineering or admins"

# headers go to the demo app on allow, next to the X-Portcullis-* identity
# headers the proxy always sets.
headers := {"X-Demo-Role": role}

role := "admin" if admin

else := "member"
