# An API with rules per path. Mark the route `public: true` so that machine
# clients without a token reach /api/health; everything else needs an
# identity (a session or a bearer JWT) and, per path, a group.
package portcullis.routes.api

import data.portcullis.lib.groups
import data.portcullis.lib.methods
import data.portcullis.lib.paths

default allow := false

# Health checks: anyone, read-only.
allow if {
	paths.under("/api/health")
	methods.read_only
}

# Reports: analysts read. (/api/v1/reports itself as well as below it.)
reports if paths.matches("/api/*/reports")

reports if paths.matches("/api/*/reports/**")

allow if {
	reports
	methods.read_only
	groups.any_of({"analysts"})
}

# Everything else under /api/v1: engineering, any method.
allow if {
	paths.under("/api/v1")
	not reports
	groups.any_of({"engineering"})
}

# Unknown paths look like they do not exist.
status := 404 if not known_path

known_path if paths.under("/api/health")

known_path if paths.under("/api/v1")

reason := "no such API path" if {
	not known_path
} else := "authentication required" if {
	not allow
	not input.user.authenticated
} else := "reports are read-only for group analysts" if {
	not allow
	reports
} else := "requires group engineering" if {
	not allow
} else := "allowed"
