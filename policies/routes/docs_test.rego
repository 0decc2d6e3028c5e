package portcullis.routes.docs_test

import data.portcullis.routes.docs

reader := {"authenticated": true, "sub": "r", "groups": ["engineering"]}

writer := {"authenticated": true, "sub": "w", "groups": ["writers"]}

test_everyone_signed_in_reads if {
	every m in ["GET", "HEAD", "OPTIONS"] {
		docs.allow with input.user as reader with input.request.method as m
	}
	not docs.headers with input.user as reader with input.request.method as "GET"
}

test_reader_cannot_write if {
	not docs.allow with input.user as reader with input.request.method as "POST"
	docs.status == 405 with input.user as reader with input.request.method as "POST"
	docs.reason == "POST needs group writers; everyone else may only read" with input.user as reader with input.request.method as "POST"
}

test_writer_writes if {
	docs.allow with input.user as writer with input.request.method as "PUT"
	docs.headers == {"X-Docs-Can-Edit": "true"} with input.user as writer with input.request.method as "PUT"
}

test_anonymous_cannot_read if {
	not docs.allow with input.user as {"authenticated": false} with input.request.method as "GET"
	not docs.status with input.user as {"authenticated": false} with input.request.method as "GET"
}

test_reasons if {
	docs.reason == "sign-in required" with input.user as {"authenticated": false} with input.request.method as "GET"
	docs.reason == "reading" with input.user as reader with input.request.method as "GET"
	docs.reason == "writer" with input.user as writer with input.request.method as "GET"
}
