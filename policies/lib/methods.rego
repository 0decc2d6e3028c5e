# HTTP method rules.
package portcullis.lib.methods

# read_only_methods are the methods that do not change anything (RFC 9110
# safe methods).
read_only_methods := {"GET", "HEAD", "OPTIONS"}

# read_only is true for a GET, HEAD or OPTIONS request.
read_only if input.request.method in read_only_methods

# one_of(methods) is true when the request's method is among methods.
one_of(methods) if input.request.method in methods
