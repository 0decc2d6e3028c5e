package portcullis.routes.payroll_test

import data.portcullis.routes.payroll

hr := {"authenticated": true, "sub": "h", "groups": ["hr"]}

# Thursday 2026-11-26; Berlin is UTC+1.
test_hr_in_office_hours if {
	payroll.allow with input.user as hr with input.request.time as "2026-11-26T09:00:00Z"
}

test_hr_after_hours if {
	not payroll.allow with input.user as hr with input.request.time as "2026-11-26T17:00:00Z"
	payroll.reason == "payroll is open Monday to Friday, 08:00 to 18:00 Berlin time" with input.user as hr with input.request.time as "2026-11-26T17:00:00Z"
}

test_hr_weekend if {
	not payroll.allow with input.user as hr with input.request.time as "2026-11-28T09:00:00Z"
}

test_not_hr if {
	not payroll.allow with input.user as {"authenticated": true, "groups": ["engineering"]} with input.request.time as "2026-11-26T09:00:00Z"
	payroll.reason == "requires group hr" with input.user as {"authenticated": true, "groups": ["engineering"]} with input.request.time as "2026-11-26T09:00:00Z"
}

test_reasons if {
	payroll.reason == "sign-in required" with input.user as {"authenticated": false} with input.request.time as "2026-11-26T09:00:00Z"
	payroll.reason == "hr, within office hours" with input.user as hr with input.request.time as "2026-11-26T09:00:00Z"
}
