package calendar_test

import data.calendar

test_listed_agent_may_use_connection if {
	calendar.decision.allow with input as {
		"subject": {"agent": "agent-1"},
		"credentials": {"mode": "token_vault", "connection": "google-oauth2"},
	}
}

test_other_agent_denied_with_reason if {
	d := calendar.decision with input as {
		"subject": {"agent": "agent-2"},
		"credentials": {"mode": "token_vault", "connection": "google-oauth2"},
	}
	not d.allow
	contains(d.reason, "agent-2")
}

test_unknown_connection_denied if {
	not calendar.decision.allow with input as {
		"subject": {"agent": "agent-1"},
		"credentials": {"mode": "token_vault", "connection": "github"},
	}
}
