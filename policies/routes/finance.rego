# Finance dashboards: group finance, signed in with multi-factor
# authentication.
package portcullis.routes.finance

import data.portcullis.lib.groups
import data.portcullis.lib.mfa

default allow := false

allow if {
	groups.any_of({"finance"})
	mfa.satisfied
}

reason := "sign-in required" if {
	not input.user.authenticated
} else := "requires group finance" if {
	not groups.any_of({"finance"})
} else := "requires multi-factor sign-in (amr claim)" if {
	not mfa.satisfied
} else := "finance, multi-factor"
