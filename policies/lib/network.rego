# Source-address rules. input.request.remote_addr is the client address the
# proxy believes: the TCP peer, or the X-Forwarded-For entry added by a
# proxy listed in listen.trusted_proxies.
package portcullis.lib.network

# from_any(cidrs) is true when the client address is inside one of cidrs
# (IPv4 or IPv6 ranges such as "10.0.0.0/8" or "2001:db8::/32"; a bare
# address matches itself).
from_any(cidrs) if {
	some c in cidrs
	net.cidr_contains(cidr(c), input.request.remote_addr)
}

cidr(c) := c if contains(c, "/")

cidr(c) := concat("", [c, "/32"]) if {
	not contains(c, "/")
	not contains(c, ":")
}

cidr(c) := concat("", [c, "/128"]) if {
	not contains(c, "/")
	contains(c, ":")
}
