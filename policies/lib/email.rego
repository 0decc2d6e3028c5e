# Email-address rules. An address counts only when the identity provider
# says it is verified: an unverified address is just text the user typed.
package portcullis.lib.email

# verified is true when the user is signed in with a verified email address.
verified if {
	input.user.authenticated == true
	input.user.email_verified == true
	input.user.email != ""
}

# domain is the lower-cased part after the last "@" of a verified address.
domain := lower(parts[count(parts) - 1]) if {
	verified
	parts := split(input.user.email, "@")
	count(parts) > 1
}

# in_domains(domains) is true when the verified address is in one of domains
# (compared case-insensitively; subdomains do not match).
in_domains(domains) if {
	some d in domains
	domain == lower(d)
}

# one_of(addresses) is true when the verified address is one of addresses.
one_of(addresses) if {
	verified
	some a in addresses
	lower(input.user.email) == lower(a)
}
