// Bench baseline: a bare Go net/http server answering every request with a short JSON body.
package main

import (
	"net/http"
	"os"
)

func main() {
	port := "18081"
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"client":{"ok":true,"message":"ok"}}`))
	})
	http.ListenAndServe("127.0.0.1:"+port, nil)
}
