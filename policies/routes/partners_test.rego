package portcullis.routes.partners_test

import data.portcullis.routes.partners

user(addr, verified) := {"authenticated": true, "sub": addr, "email": addr, "email_verified": verified}

test_partner_allowed if {
	partners.allow with input.user as user("pat@Partner.example", true)
	partners.reason == "verified address at partner.example" with input.user as user("pat@Partner.example", true)
}

test_staff_allowed if {
	partners.allow with input.user as user("sam@example.com", true)
}

test_unverified_denied if {
	not partners.allow with input.user as user("pat@partner.example", false)
	partners.reason == "your email address is not verified by the identity provider" with input.user as user("pat@partner.example", false)
}

test_other_domain_denied if {
	not partners.allow with input.user as user("eve@evil.test", true)
	partners.reason == "email domain evil.test is not a partner domain" with input.user as user("eve@evil.test", true)
}

test_anonymous if {
	not partners.allow with input.user as {"authenticated": false, "email": "", "email_verified": false}
	partners.reason == "sign-in required" with input.user as {"authenticated": false, "email": "", "email_verified": false}
}
