# Payroll: group hr, during Berlin office hours only.
package portcullis.routes.payroll

import data.portcullis.lib.groups
import data.portcullis.lib.timewindow

office_hours := {
	"tz": "Europe/Berlin",
	"days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
	"start": "08:00",
	"end": "18:00",
}

default allow := false

allow if {
	groups.any_of({"hr"})
	timewindow.within(office_hours)
}

reason := "sign-in required" if {
	not input.user.authenticated
} else := "requires group hr" if {
	not groups.any_of({"hr"})
} else := "payroll is open Monday to Friday, 08:00 to 18:00 Berlin time" if {
	not allow
} else := "hr, within office hours"
