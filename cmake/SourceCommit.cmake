# Script mode (cmake -DSOURCE_DIR=... -DOUTPUT=... -P SourceCommit.cmake): writes OUTPUT as
#   {"commit": "<40 hex digits>", "dirty": true|false}
# when SOURCE_DIR is the top of a git checkout, else {"commit": null, "dirty": null} (an sdist, or no git).
# An installed dtc is no checkout, so its run records read the commit from this file. The build runs the
# script every time (not at configure time), so an incremental rebuild after a new commit records that
# commit; OUTPUT is only rewritten when its content changes.
if(NOT SOURCE_DIR OR NOT OUTPUT)
  message(FATAL_ERROR "SourceCommit.cmake needs -DSOURCE_DIR=<dtc source> -DOUTPUT=<file>")
endif()
set(commit "null")
set(dirty "null")
find_package(Git QUIET)
# The build already runs this tree's own CMake code, so trusting its git metadata adds no risk; without
# this, a checkout owned by another user (a CI container, a shared machine) gives no commit.
set(trust -c "safe.directory=${SOURCE_DIR}")
if(GIT_FOUND)
  execute_process(COMMAND "${GIT_EXECUTABLE}" ${trust} -C "${SOURCE_DIR}" rev-parse --show-toplevel HEAD
                  RESULT_VARIABLE failed OUTPUT_VARIABLE lines OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT failed)
    string(REPLACE "\n" ";" lines "${lines}")
    list(GET lines 0 top)
    list(GET lines 1 sha)
    file(REAL_PATH "${top}" top)
    file(REAL_PATH "${SOURCE_DIR}" source)
    # A source tree inside some other repository (an unpacked sdist, say) is not that repository's commit.
    if(top STREQUAL source)
      set(commit "\"${sha}\"")
      execute_process(COMMAND "${GIT_EXECUTABLE}" ${trust} -C "${SOURCE_DIR}" status --porcelain --untracked-files=no
                      RESULT_VARIABLE failed OUTPUT_VARIABLE changes ERROR_QUIET)
      if(NOT failed)
        if(changes STREQUAL "")
          set(dirty "false")
        else()
          set(dirty "true")
        endif()
      endif()
    endif()
  endif()
endif()
set(text "{\"commit\": ${commit}, \"dirty\": ${dirty}}\n")
set(previous "")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" previous)
endif()
if(NOT previous STREQUAL text)
  file(WRITE "${OUTPUT}" "${text}")
endif()
