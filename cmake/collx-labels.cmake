# collx_label_tests(LABEL...): every test this directory added so far gets the labels, so
# that `ctest -L <label>` runs one area alone (unit, multiprocess, netns, mpi, fuzz, gpu,
# bench, packaging, torch, launcher, examples; docs, the README's figures, labels itself
# in tests/CMakeLists.txt). Labels are appended to any a test has. A
# name with a semicolon cannot pass through a list: its test labels itself where added.
function(collx_label_tests)
  get_property(tests DIRECTORY PROPERTY TESTS)
  foreach(t IN LISTS tests)
    if(TEST "${t}")
      set_property(TEST "${t}" APPEND PROPERTY LABELS ${ARGN})
      if(t MATCHES "mpi")
        set_property(TEST "${t}" APPEND PROPERTY LABELS mpi)
      endif()
    endif()
  endforeach()
endfunction()
