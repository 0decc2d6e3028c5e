package portcullis.routes.api_test

import data.portcullis.routes.api

analyst := {"authenticated": true, "sub": "a", "groups": ["analysts"]}

engineer := {"authenticated": true, "sub": "e", "groups": ["engineering"]}

anonymous := {"authenticated": false, "groups": []}

req(method, path) := {"method": method, "path": path}

test_health_is_open if {
	api.allow with input.user as anonymous with input.request as req("GET", "/api/health")
	not api.allow with input.user as anonymous with input.request as req("POST", "/api/health")
}

test_reports_for_analysts if {
	api.allow with input.user as analyst with input.request as req("GET", "/api/v1/reports/q3")
	not api.allow with input.user as analyst with input.request as req("DELETE", "/api/v1/reports/q3")
	not api.allow with input.user as engineer with input.request as req("GET", "/api/v1/reports/q3")
	api.reason == "reports are read-only for group analysts" with input.user as engineer with input.request as req("GET", "/api/v1/reports/q3")

	# The reports collection itself, with or without a trailing slash.
	every p in ["/api/v1/reports", "/api/v1/reports/"] {
		api.allow with input.user as analyst with input.request as req("GET", p)
		not api.allow with input.user as engineer with input.request as req("DELETE", p)
	}
}

test_rest_for_engineering if {
	api.allow with input.user as engineer with input.request as req("POST", "/api/v1/deployments")
	not api.allow with input.user as analyst with input.request as req("POST", "/api/v1/deployments")
	api.reason == "requires group engineering" with input.user as analyst with input.request as req("POST", "/api/v1/deployments")
}

test_unknown_paths_are_404 if {
	not api.allow with input.user as engineer with input.request as req("GET", "/api/v2/x")
	api.status == 404 with input.user as engineer with input.request as req("GET", "/api/v2/x")
	api.reason == "no such API path" with input.user as engineer with input.request as req("GET", "/api/v2/x")
}

test_anonymous_elsewhere if {
	not api.allow with input.user as anonymous with input.request as req("GET", "/api/v1/deployments")
	api.reason == "authentication required" with input.user as anonymous with input.request as req("GET", "/api/v1/deployments")
}

test_health_reason_and_status if {
	api.reason == "allowed" with input.user as anonymous with input.request as req("GET", "/api/health")
	not api.status with input.user as anonymous with input.request as req("GET", "/api/health")
}
