package portcullis.lib.methods_test

import data.portcullis.lib.methods

test_read_only if {
	every m in ["GET", "HEAD", "OPTIONS"] {
		methods.read_only with input.request.method as m
	}
}

test_writes_are_not_read_only if {
	every m in ["POST", "PUT", "PATCH", "DELETE", "get"] {
		not methods.read_only with input.request.method as m
	}
}

test_one_of if {
	methods.one_of({"POST"}) with input.request.method as "POST"
	not methods.one_of({"POST"}) with input.request.method as "PUT"
}
