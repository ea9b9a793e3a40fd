module github.com/seed589fcc9d/tableflip/bench

go 1.26

replace github.com/seed589fcc9d/tableflip => ../

require (
	github.com/cloudflare/tableflip v1.2.3
	github.com/seed589fcc9d/tableflip v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.30.0
)
