package portcullis.routes.internal_test

import data.portcullis.routes.internal

user := {"authenticated": true, "sub": "u"}

test_office if {
	internal.allow with input.user as user with input.request.remote_addr as "192.0.2.10"
	internal.allow with input.user as user with input.request.remote_addr as "2001:db8:100:1::5"
}

test_vpn if {
	internal.allow with input.user as user with input.request.remote_addr as "198.51.100.100"
	not internal.allow with input.user as user with input.request.remote_addr as "198.51.100.200"
}

test_outside_is_404 if {
	not internal.allow with input.user as user with input.request.remote_addr as "203.0.113.5"
	internal.status == 404 with input.user as user with input.request.remote_addr as "203.0.113.5"
	internal.reason == "source address 203.0.113.5 is outside the office and VPN ranges" with input.user as user with input.request.remote_addr as "203.0.113.5"
}

test_anonymous_in_office if {
	not internal.allow with input.user as {"authenticated": false} with input.request.remote_addr as "192.0.2.10"
	not internal.status with input.user as {"authenticated": false} with input.request.remote_addr as "192.0.2.10"
}

test_reasons if {
	internal.reason == "sign-in required" with input.user as {"authenticated": false} with input.request.remote_addr as "192.0.2.10"
	internal.reason == "signed in from the office or VPN" with input.user as user with input.request.remote_addr as "192.0.2.10"
}
