# Invoices API policy (route `invoices`).
#
# Paths: GET  /invoices/<department>/<invoice id>        read an invoice
#        POST /invoices/<department>/<invoice id>/pay    pay it; JSON body {"amount": n, "currency": "EUR"}
#
# - An agent may only touch invoices of its user's own department (token claim `dept`).
# - Reading needs the effective scope `invoices:read` (after the role map).
# - Paying needs `invoices:pay`; amounts over `payment_limit` need the user's approval on
#   their own device (CIBA): the decision carries the binding message both devices show and
#   the RFC 9396 authorization_details the user approves.
package invoices

payment_limit := 1000

default currency := "EUR"

currency := input.body.currency if is_string(input.body.currency)

default decision := {"allow": false, "reason": "no rule allows this request"}

segments := split(trim_prefix(input.request.path, "/"), "/")

department := segments[1]

own_department if department == input.subject.claims.dept

is_read if {
	input.request.method == "GET"
	count(segments) >= 2
}

is_payment if {
	input.request.method == "POST"
	count(segments) == 4
	segments[3] == "pay"
}

decision := {"allow": false, "reason": sprintf("invoices of department '%s' belong to another department than the user's", [department])} if {
	count(segments) >= 2
	not own_department
} else := {"allow": true, "reason": "reading an invoice of the user's own department"} if {
	is_read
	"invoices:read" in input.subject.scopes
} else := {"allow": false, "reason": "reading invoices needs the invoices:read scope"} if {
	is_read
} else := {"allow": false, "reason": "paying needs the invoices:pay scope"} if {
	is_payment
	not "invoices:pay" in input.subject.scopes
} else := {"allow": false, "reason": "a payment needs a numeric amount in the JSON body"} if {
	is_payment
	not is_number(input.body.amount)
} else := {
	"allow": true,
	"reason": sprintf("payments over %d need the user's approval", [payment_limit]),
	"require_approval": {
		"binding_message": sprintf("Pay %s %v %s", [segments[2], input.body.amount, currency]),
		"authorization_details": [{
			"type": "payment_initiation",
			"instructedAmount": {"amount": input.body.amount, "currency": currency},
			"creditorInvoice": segments[2],
			"department": department,
		}],
		"scope": "invoices:pay",
	},
} if {
	is_payment
	input.body.amount > payment_limit
} else := {"allow": true, "reason": "payment within the limit"} if {
	is_payment
}
