# An internal tool reachable only from the office and VPN address ranges.
# From anywhere else it answers 404, so that its existence is not revealed.
package portcullis.routes.internal

import data.portcullis.lib.network

office_networks := [
	"192.0.2.0/24", # office
	"198.51.100.0/25", # VPN
	"2001:db8:100::/48", # office IPv6
]

default allow := false

allow if {
	input.user.authenticated == true
	network.from_any(office_networks)
}

status := 404 if not network.from_any(office_networks)

reason := sprintf("source address %s is outside the office and VPN ranges", [input.request.remote_addr]) if {
	not network.from_any(office_networks)
} else := "sign-in required" if {
	not input.user.authenticated
} else := "signed in from the office or VPN"
