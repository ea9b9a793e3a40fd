module github.com/seed589fcc9d/tableflip

go 1.23
