package portcullis.routes.finance_test

import data.portcullis.routes.finance

fin(amr) := {"authenticated": true, "sub": "f", "groups": ["finance"], "claims": {"amr": amr}}

test_finance_with_mfa if {
	finance.allow with input.user as fin(["pwd", "mfa"])
	finance.reason == "finance, multi-factor" with input.user as fin(["pwd", "mfa"])
}

test_finance_without_mfa if {
	not finance.allow with input.user as fin(["pwd"])
	finance.reason == "requires multi-factor sign-in (amr claim)" with input.user as fin(["pwd"])
}

test_not_finance if {
	not finance.allow with input.user as {"authenticated": true, "groups": ["engineering"], "claims": {"amr": ["mfa"]}}
	finance.reason == "requires group finance" with input.user as {"authenticated": true, "groups": ["engineering"], "claims": {"amr": ["mfa"]}}
}

test_anonymous if {
	not finance.allow with input.user as {"authenticated": false}
	finance.reason == "sign-in required" with input.user as {"authenticated": false}
}
