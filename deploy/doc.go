// Package deploy holds what operators load next to segedge, not Go code: the Grafana dashboard
// (grafana/segedge.json) and the Prometheus alerting rules with their promtool unit tests
// (prometheus/alerts.yml, prometheus/alerts_test.yml). Its tests check that every PromQL
// expression in them names only metrics listed in docs/metrics.md, which e2e proves equal to
// what the programs export, and run promtool on the rules.
package deploy
