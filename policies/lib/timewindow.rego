# Time windows such as office hours. The time is input.request.time (when
# the request arrived, RFC 3339), read in the window's own time zone, so
# that daylight-saving changes are handled by the IANA time zone database.
package portcullis.lib.timewindow

# within(window) is true when the request time falls in window, an object
#
#	{"tz": "Europe/Berlin", "days": ["Monday", "Tuesday"], "start": "09:00", "end": "17:30"}
#
# days are English weekday names (all days when absent); start is
# inclusive and end exclusive, both "HH:MM" in 24-hour time. A window whose
# end is before its start runs past midnight ("22:00" to "06:00"), and then
# days names the day the window starts on.
within(window) if {
	[day, minute] := local(window.tz)
	start := minutes(window.start)
	end := minutes(window.end)
	start <= end
	day_ok(window, day)
	minute >= start
	minute < end
}

# Overnight window, evening part.
within(window) if {
	[day, minute] := local(window.tz)
	start := minutes(window.start)
	end := minutes(window.end)
	start > end
	day_ok(window, day)
	minute >= start
}

# Overnight window, morning part: it belongs to the previous day's window.
within(window) if {
	[_, minute] := local(window.tz)
	start := minutes(window.start)
	end := minutes(window.end)
	start > end
	minute < end
	day_ok(window, previous_day(window.tz))
}

# within_any(windows) is true when the request time is in one of windows.
within_any(windows) if {
	some w in windows
	within(w)
}

# local(tz) is [weekday, minute of the day] of the request time in tz.
local(tz) := [time.weekday([ns, tz]), (h * 60) + m] if {
	ns := time.parse_rfc3339_ns(input.request.time)
	[h, m, _] := time.clock([ns, tz])
}

# previous_day(tz) is the weekday before the request's local weekday in tz
# (counted on the calendar, not as 24 hours earlier, which is another day
# in the hour after midnight following a daylight-saving change).
previous_day(tz) := week[(i + 6) % 7] if {
	today := local(tz)[0]
	some i, day in week
	day == today
}

week := ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]

day_ok(window, _) if not window.days

day_ok(window, day) if day in window.days

# minutes("09:30") == 570
minutes(hhmm) := (to_number(h) * 60) + to_number(m) if {
	[h, m] := split(hhmm, ":")
}
