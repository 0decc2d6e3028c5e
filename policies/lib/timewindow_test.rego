package portcullis.lib.timewindow_test

import data.portcullis.lib.timewindow

office := {"tz": "Europe/Berlin", "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"], "start": "09:00", "end": "17:30"}

night := {"tz": "America/New_York", "days": ["Friday"], "start": "22:00", "end": "06:00"}

# 2026-11-26 is a Thursday; Berlin is UTC+1 in November.
test_inside_office_hours if {
	timewindow.within(office) with input.request.time as "2026-11-26T08:00:00Z"
}

test_start_is_inclusive_end_exclusive if {
	timewindow.within(office) with input.request.time as "2026-11-26T08:00:00Z"
	not timewindow.within(office) with input.request.time as "2026-11-26T16:30:00Z"
	timewindow.within(office) with input.request.time as "2026-11-26T16:29:59Z"
}

test_before_office_hours_local_time if {
	# 08:30 UTC is 09:30 in Berlin in winter, but 07:59 UTC is 08:59.
	not timewindow.within(office) with input.request.time as "2026-11-26T07:59:00Z"
}

test_daylight_saving if {
	# In July Berlin is UTC+2: 07:30 UTC is 09:30 local.
	timewindow.within(office) with input.request.time as "2026-07-02T07:30:00Z"
}

test_weekend if {
	# Saturday 2026-11-28 at noon.
	not timewindow.within(office) with input.request.time as "2026-11-28T11:00:00Z"
}

test_offset_in_input_time if {
	timewindow.within(office) with input.request.time as "2026-11-26T10:00:00+01:00"
}

test_overnight_window if {
	# Friday 23:00 in New York (UTC-5) is Saturday 04:00 UTC.
	timewindow.within(night) with input.request.time as "2026-11-28T04:00:00Z"

	# Saturday 05:00 in New York belongs to Friday's window.
	timewindow.within(night) with input.request.time as "2026-11-28T10:00:00Z"

	# Saturday 07:00 does not; nor does Saturday 23:00.
	not timewindow.within(night) with input.request.time as "2026-11-28T12:00:00Z"
	not timewindow.within(night) with input.request.time as "2026-11-29T04:00:00Z"
}

test_all_days_when_absent if {
	timewindow.within({"tz": "UTC", "start": "00:00", "end": "23:59"}) with input.request.time as "2026-11-28T12:00:00Z"
}

test_within_any if {
	timewindow.within_any([night, office]) with input.request.time as "2026-11-26T08:00:00Z"
	not timewindow.within_any([night, office]) with input.request.time as "2026-11-26T20:00:00Z"
}

test_overnight_window_after_spring_forward if {
	# Berlin moved to CEST on Sunday 2025-03-30. Monday 00:30 CEST is
	# Sunday 22:30 UTC, and 24 hours before it was Saturday 23:30 CET: the
	# previous day is still Sunday, on the calendar.
	sunday_night := {"tz": "Europe/Berlin", "days": ["Sunday"], "start": "22:00", "end": "06:00"}
	saturday_night := {"tz": "Europe/Berlin", "days": ["Saturday"], "start": "22:00", "end": "06:00"}
	timewindow.within(sunday_night) with input.request.time as "2025-03-30T22:30:00Z"
	not timewindow.within(saturday_night) with input.request.time as "2025-03-30T22:30:00Z"
}
