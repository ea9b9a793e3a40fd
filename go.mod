module github.com/seed589fcc9d/tableflip

go 1.23

require golang.org/x/sys v0.30.0
