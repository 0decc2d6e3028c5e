# Path rules. input.request.path is already normalized by the proxy (no
# "..", no duplicate slashes, percent-decoding applied), and it is the path
# the upstream receives.
package portcullis.lib.paths

# under(prefix) is true for the path prefix itself and everything below it:
# under("/admin") matches /admin, /admin/ and /admin/users, not /administrator.
under(prefix) if input.request.path == trim_suffix(prefix, "/")

under(prefix) if startswith(input.request.path, concat("", [trim_suffix(prefix, "/"), "/"]))

# matches(pattern) matches the path against a glob where "*" stays within
# one path segment and "**" spans segments: matches("/api/*/reports/**").
matches(pattern) if glob.match(pattern, ["/"], input.request.path)
