package portcullis.lib.mfa_test

import data.portcullis.lib.mfa

user(amr) := {"authenticated": true, "sub": "u", "claims": {"amr": amr}}

test_mfa_value if {
	mfa.satisfied with input.user as user(["pwd", "mfa"])
}

test_two_kinds_of_factor if {
	mfa.satisfied with input.user as user(["pwd", "otp"])
	mfa.satisfied with input.user as user(["hwk", "fpt"])
}

test_one_kind_is_not_enough if {
	not mfa.satisfied with input.user as user(["pwd"])
	not mfa.satisfied with input.user as user(["pwd", "pin"])
}

test_string_claim if {
	mfa.satisfied with input.user as user("mfa")
	not mfa.satisfied with input.user as user("pwd")
}

test_no_claim if {
	not mfa.satisfied with input.user as {"authenticated": true, "sub": "u", "claims": {}}
}

test_anonymous if {
	not mfa.satisfied with input.user as {"authenticated": false, "claims": {"amr": ["mfa"]}}
}

test_any_of if {
	mfa.any_of({"hwk"}) with input.user as user(["hwk", "user"])
	not mfa.any_of({"hwk"}) with input.user as user(["otp"])
}
