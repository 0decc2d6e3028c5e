# Multi-factor authentication, read from the "amr" (authentication methods
# references, RFC 8176) claim of the ID token or bearer JWT. Providers
# differ: some send "mfa", others list the factors used. Ask your provider
# which values it emits and test with them.
package portcullis.lib.mfa

# methods is the set of amr values (the claim may be an array or a string).
methods contains m if {
	some m in input.user.claims.amr
	is_string(m)
}

methods contains input.user.claims.amr if is_string(input.user.claims.amr)

# Factors by kind (RFC 8176 §2).
knowledge := {"pwd", "pin", "kba"}

possession := {"otp", "hwk", "swk", "sms", "tel", "sc"}

inherence := {"fpt", "face", "iris", "retina", "vbm", "bio"}

# satisfied is true when the user signed in with more than one kind of
# factor: the provider says "mfa", or the amr values name factors of two
# different kinds (a password and a one-time code, a key and a fingerprint).
satisfied if {
	input.user.authenticated == true
	"mfa" in methods
}

satisfied if {
	input.user.authenticated == true
	count([k |
		some k in [knowledge, possession, inherence]
		count(k & methods) > 0
	]) >= 2
}

# any_of(values) is true when one of values is in amr, for providers whose
# amr values are their own ("hwk" for a security key, say).
any_of(values) if {
	input.user.authenticated == true
	some v in values
	v in methods
}
