module flux.local/flux

go 1.24
