# Documentation site: everyone signed in may read; only group writers may
# change anything. Writers get a header telling the app to show edit links.
package portcullis.routes.docs

import data.portcullis.lib.groups
import data.portcullis.lib.methods

default allow := false

allow if {
	input.user.authenticated == true
	methods.read_only
}

allow if groups.any_of({"writers"})

# 405 tells well-behaved clients that the method, not the user, is the
# problem.
status := 405 if {
	input.user.authenticated == true
	not methods.read_only
}

reason := "sign-in required" if {
	not input.user.authenticated
} else := sprintf("%s needs group writers; everyone else may only read", [input.request.method]) if {
	not allow
} else := "writer" if {
	groups.any_of({"writers"})
} else := "reading"

headers := {"X-Docs-Can-Edit": "true"} if groups.any_of({"writers"})
