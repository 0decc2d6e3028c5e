package portcullis.lib.groups_test

import data.portcullis.lib.groups

alice := {"authenticated": true, "sub": "alice", "groups": ["engineering"]}

bob := {"authenticated": true, "sub": "bob", "groups": ["engineering", "admins"]}

test_any_of_member if {
	groups.any_of({"admins", "engineering"}) with input.user as alice
}

test_any_of_accepts_arrays if {
	groups.any_of(["engineering"]) with input.user as alice
}

test_any_of_not_member if {
	not groups.any_of({"admins"}) with input.user as alice
}

test_any_of_needs_authentication if {
	not groups.any_of({"engineering"}) with input.user as {"authenticated": false, "groups": ["engineering"]}
}

test_all_of if {
	groups.all_of({"engineering", "admins"}) with input.user as bob
	not groups.all_of({"engineering", "admins"}) with input.user as alice
}
