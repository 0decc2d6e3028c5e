package portcullis.lib.paths_test

import data.portcullis.lib.paths

test_under if {
	every p in ["/admin", "/admin/", "/admin/users/1"] {
		paths.under("/admin") with input.request.path as p
	}
}

test_under_trailing_slash_prefix if {
	paths.under("/admin/") with input.request.path as "/admin"
	paths.under("/admin/") with input.request.path as "/admin/x"
}

test_not_under if {
	every p in ["/administrator", "/", "/public/admin"] {
		not paths.under("/admin") with input.request.path as p
	}
}

test_root_covers_everything if {
	paths.under("/") with input.request.path as "/anything/at/all"
}

test_matches if {
	paths.matches("/api/*/reports/**") with input.request.path as "/api/v1/reports/2026/q3"
	not paths.matches("/api/*/reports/**") with input.request.path as "/api/v1/x/reports/q3"
}

test_under_any_case if {
	every p in ["/admin", "/ADMIN", "/Admin/users", "/aDmIn/"] {
		paths.under_any_case("/admin") with input.request.path as p
	}
	paths.under_any_case("/Admin/") with input.request.path as "/admin/x"
	not paths.under_any_case("/admin") with input.request.path as "/ADMINISTRATOR"
	not paths.under("/admin") with input.request.path as "/ADMIN"
}
