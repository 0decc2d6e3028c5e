package portcullis.routes.demo_test

import data.portcullis.routes.demo

alice := {"authenticated": true, "sub": "alice", "email": "alice@example.com", "email_verified": true, "groups": ["engineering"]}

bob := {"authenticated": true, "sub": "bob", "email": "bob@example.com", "email_verified": true, "groups": ["engineering", "admins"]}

anonymous := {"authenticated": false, "sub": "", "groups": []}

req(path) := {"method": "GET", "path": path}

test_alice_reaches_the_app if {
	demo.allow with input.user as alice with input.request as req("/")
	demo.allow with input.user as alice with input.request as req("/reports/q3")
	demo.headers["X-Demo-Role"] == "member" with input.user as alice with input.request as req("/")
}

test_alice_not_admin_area if {
	not demo.allow with input.user as alice with input.request as req("/admin")
	not demo.allow with input.user as alice with input.request as req("/admin/users")
	demo.reason == "the /admin area is for group admins" with input.user as alice with input.request as req("/admin")
}

test_administrator_path_is_not_admin_area if {
	demo.allow with input.user as alice with input.request as req("/administrators-guide")
}

test_bob_reaches_both if {
	demo.allow with input.user as bob with input.request as req("/")
	demo.allow with input.user as bob with input.request as req("/admin/users")
	demo.reason == "admin: member of admins" with input.user as bob with input.request as req("/admin")
	demo.headers["X-Demo-Role"] == "admin" with input.user as bob with input.request as req("/admin")
}

test_anonymous_denied if {
	not demo.allow with input.user as anonymous with input.request as req("/")
	demo.reason == "sign-in required" with input.user as anonymous with input.request as req("/")
}

test_other_groups_denied if {
	not demo.allow with input.user as {"authenticated": true, "sub": "eve", "groups": ["sales"]} with input.request as req("/")
	demo.reason == "the demo app is for groups engineering or admins" with input.user as {"authenticated": true, "sub": "eve", "groups": ["sales"]} with input.request as req("/")
}

test_alice_reason if {
	demo.reason == "member of engineering or admins" with input.user as alice with input.request as req("/")
}
