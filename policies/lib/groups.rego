# Group membership. Groups come from the identity provider's groups claim
# (identity.providers[].groups_claim) and are compared exactly.
package portcullis.lib.groups

# any_of(groups) is true when the signed-in user is in at least one of groups
# (a set or an array of names).
any_of(groups) if {
	input.user.authenticated == true
	some g in input.user.groups
	g in groups
}

# all_of(groups) is true when the signed-in user is in every one of groups.
all_of(groups) if {
	input.user.authenticated == true
	every g in groups {
		g in input.user.groups
	}
}
