package portcullis.routes.admin_test

import data.portcullis.routes.admin

bob := {"authenticated": true, "sub": "bob", "groups": ["engineering", "admins"], "claims": {"amr": ["pwd"]}}

bob_mfa := object.union(bob, {"claims": {"amr": ["pwd", "otp"]}})

alice := {"authenticated": true, "sub": "alice", "groups": ["engineering"], "claims": {"amr": ["pwd", "mfa"]}}

test_admin_reads if {
	admin.allow with input.user as bob with input.request.method as "GET"
	admin.reason == "member of admins" with input.user as bob with input.request.method as "GET"
}

test_admin_writes_need_mfa if {
	not admin.allow with input.user as bob with input.request.method as "POST"
	admin.reason == "changes require multi-factor sign-in: sign out and in again with a second factor" with input.user as bob with input.request.method as "POST"
	admin.allow with input.user as bob_mfa with input.request.method as "POST"
}

test_non_admin_denied_even_with_mfa if {
	not admin.allow with input.user as alice with input.request.method as "GET"
	admin.reason == "requires group admins" with input.user as alice with input.request.method as "GET"
}

test_anonymous if {
	not admin.allow with input.user as {"authenticated": false} with input.request.method as "GET"
	admin.reason == "sign-in required" with input.user as {"authenticated": false} with input.request.method as "GET"
}
