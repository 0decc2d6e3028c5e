package portcullis.lib.network_test

import data.portcullis.lib.network

office := ["192.0.2.0/24", "2001:db8:1::/48", "198.51.100.7"]

test_inside_v4 if {
	network.from_any(office) with input.request.remote_addr as "192.0.2.44"
}

test_inside_v6 if {
	network.from_any(office) with input.request.remote_addr as "2001:db8:1:2::10"
}

test_single_address if {
	network.from_any(office) with input.request.remote_addr as "198.51.100.7"
	not network.from_any(office) with input.request.remote_addr as "198.51.100.8"
}

test_outside if {
	not network.from_any(office) with input.request.remote_addr as "203.0.113.9"
	not network.from_any(office) with input.request.remote_addr as "2001:db8:2::1"
}

test_single_v6_address if {
	network.from_any(["2001:db8::1"]) with input.request.remote_addr as "2001:db8::1"
	not network.from_any(["2001:db8::1"]) with input.request.remote_addr as "2001:db8::2"
}
