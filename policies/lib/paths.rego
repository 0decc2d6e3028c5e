# Path rules. input.request.path is already normalized by the proxy (no
# "..", no duplicate slashes, percent-decoding applied), and it is the path
# the upstream receives.
package portcullis.lib.paths

# under(prefix) is true for the path prefix itself and everything below it:
# under("/admin") matches /admin, /admin/ and /admin/users, not /administrator.
under(prefix) if input.request.path == trim_suffix(prefix, "/")

under(prefix) if startswith(input.request.path, concat("", [trim_suffix(prefix, "/"), "/"]))

# under_any_case(prefix) is under(prefix) with case ignored. Paths are
# case-sensitive in HTTP and here; an upstream that matches them without
# case (IIS, ASP.NET, Express by default) serves /ADMIN as /admin, so guard
# its areas with this: under_any_case("/admin") matches /Admin/users too.
under_any_case(prefix) if lower(input.request.path) == lower(trim_suffix(prefix, "/"))

under_any_case(prefix) if startswith(lower(input.request.path), concat("", [lower(trim_suffix(prefix, "/")), "/"]))

# matches(pattern) matches the path against a glob where "*" stays within
# one path segment and "**" spans segments: matches("/api/*/reports/**").
matches(pattern) if glob.match(pattern, ["/"], input.request.path)
