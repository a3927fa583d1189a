;; A Flux function in WebAssembly text: records a note, pushes a job, reads the clock and random bytes, and
;; answers with the database's reply. Host calls are JSON (docs/functions.md); this one keeps them as data.
(module
  (import "flux" "call" (func $call (param i32 i32) (result i64)))
  (import "flux" "log" (func $log (param i32 i32)))
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 4096))  ;; a bump allocator above the data below: each request is a fresh instance

  (data (i32.const 16) "{\"op\":\"db.query\",\"args\":{\"insert\":\"notes\",\"values\":{\"body\":\"written by wat\"},\"returning\":[\"id\",\"body\"]}}")
  (data (i32.const 512) "{\"op\":\"queue.push\",\"args\":{\"function\":\"wat_notes\",\"payload\":{\"from\":\"wat\"}}}")
  (data (i32.const 768) "{\"op\":\"now\"}")
  (data (i32.const 800) "{\"op\":\"random\",\"args\":{\"bytes\":8}}")
  (data (i32.const 848) "hello from wat")

  (func (export "flux_alloc") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    ;; grow when the bump passes the end of memory
    (block $done
      (loop $grow
        (br_if $done (i32.le_u (global.get $next) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.lt_s (memory.grow (i32.const 1)) (i32.const 0)) (then (unreachable)))
        (br $grow)))
    (local.get $at))

  (func (export "flux_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $reply i64)
    (call $log (i32.const 848) (i32.const 14))
    (drop (call $call (i32.const 768) (i32.const 12)))
    (drop (call $call (i32.const 800) (i32.const 34)))
    (drop (call $call (i32.const 512) (i32.const 76)))
    ;; the reply of the insert is {"ok":true,"value":{...}}: hand it back as the body
    (call $call (i32.const 16) (i32.const 104))))
