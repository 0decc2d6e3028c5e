# A partner portal: anyone whose verified email address is at one of the
# partner domains, plus our own staff.
package portcullis.routes.partners

import data.portcullis.lib.email

partner_domains := {"partner.example", "supplier.example"}

staff_domains := {"example.com"}

default allow := false

allow if email.in_domains(partner_domains)

allow if email.in_domains(staff_domains)

reason := "sign-in required" if {
	not input.user.authenticated
} else := "your email address is not verified by the identity provider" if {
	not email.verified
} else := sprintf("email domain %s is not a partner domain", [email.domain]) if {
	not allow
} else := sprintf("verified address at %s", [email.domain])
