# Calendar API policy (route `calendar`, credentials from Auth0 Token Vault).
#
# Only agents listed for a connection may use the user's connection token.
package calendar

connection_agents := {"google-oauth2": {"agent-1"}}

default decision := {"allow": false, "reason": "no rule allows this request"}

decision := {"allow": true, "reason": "this agent may use the connection"} if {
	input.subject.agent in connection_agents[input.credentials.connection]
} else := {"allow": false, "reason": sprintf("agent '%s' may not use connection '%s'", [input.subject.agent, input.credentials.connection])}
