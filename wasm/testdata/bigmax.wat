;; Declares a 4 GiB maximum, then grows as far as allowed: the host cap still holds.
(module
  (memory (export "memory") 1 65536)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 4096))
  (func (export "segedge_output_ptr") (result i32) (i32.const 8192))
  (func (export "segedge_eval") (param i32) (result i32)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (i32.const 0)))
