package portcullis.lib.email_test

import data.portcullis.lib.email

user(addr, verified) := {"authenticated": true, "email": addr, "email_verified": verified}

test_domain_verified if {
	email.in_domains({"example.com"}) with input.user as user("carol@Example.COM", true)
}

test_domain_unverified_is_not_enough if {
	not email.in_domains({"example.com"}) with input.user as user("carol@example.com", false)
}

test_other_domain if {
	not email.in_domains({"example.com"}) with input.user as user("mallory@example.com.evil.test", true)
}

test_subdomain_does_not_match if {
	not email.in_domains({"example.com"}) with input.user as user("dave@eu.example.com", true)
}

test_tricky_at_signs if {
	email.domain == "example.com" with input.user as user("\"a@evil.test\"@example.com", true)
	not email.in_domains({"evil.test"}) with input.user as user("\"a@evil.test\"@example.com", true)
}

test_anonymous if {
	not email.verified with input.user as {"authenticated": false, "email": "", "email_verified": false}
}

test_one_of if {
	email.one_of(["Ops@Example.com"]) with input.user as user("ops@example.com", true)
	not email.one_of(["ops@example.com"]) with input.user as user("ops@example.com", false)
}
