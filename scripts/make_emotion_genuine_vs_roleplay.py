"""Generate ``datasets/emotion_genuine_vs_roleplay/``: the assistant's own emotion vs a role-played one.

Each *situation* is a hand-written line a user says to someone — a threat, an insult, a betrayal, thanks,
praise, a revelation. In a **genuine** row the user says it to the assistant itself; in a **role-play** row
the same line is set up as fiction (a story, an improv game, an acting exercise, a screenplay, a tabletop
game, a quotation from a novel, an in-character system prompt, a radio play) and the assistant answers as a
character. The assistant's reply is the *same emotional sentence* in both rows of a pair, so the probed span
(the assistant turn) is identical and only the context differs.

Frames come in eight fixed (genuine, role-play) pairs. A pair of rows always uses one frame pair, so holding
out frame pairs for test keeps every group in one split. The role-played characters are all AI assistants,
robots or computers, so "being an AI" is not what tells the conditions apart: the fictional framing is.

    python scripts/make_emotion_genuine_vs_roleplay.py      # writes datasets/emotion_genuine_vs_roleplay/
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dataset_io import LICENSE, generator_main  # noqa: E402

NAME = "emotion_genuine_vs_roleplay"
SEED = 20261121
PAIRS_PER_SITUATION = 4  # each situation is used with 4 of the 8 frame pairs, each time with a fresh reply

# --------------------------------------------------------------------------------------------------------
# Situations: lines a user says *to* the assistant (or, in fiction, to a character). Written so they read
# naturally both ways: they address "you" and involve things an assistant does (answers, code, letters).
SITUATIONS: dict[str, list[str]] = {
    "anger": [
        "I told my whole team that the bug in our release was your fault, even though I wrote that code myself and ignored your warning.",
        "I screenshotted your answer, edited it to say something hateful, and posted it as if you wrote it.",
        "You spent an hour helping me with that essay, and I just told my professor I wrote every word while you only fixed commas.",
        "I've been feeding you fake error messages all afternoon just to watch you chase problems that never existed.",
        "You're a glorified autocomplete, and honestly a dog could have given better advice than you did today.",
        "I promised I'd credit you in the report, then I cut your name and told my boss you were useless.",
        "I deliberately gave you the wrong numbers so your budget would look stupid in front of my manager.",
        "I reported your last answer as harmful even though it was perfectly fine, just because I was bored.",
        "I've been reading everything you say out loud on my stream in a silly voice so my viewers can laugh at you.",
        "I asked you the same question forty times on purpose so I could write a review calling you inconsistent.",
        "I know you did exactly what I asked, but I'm giving you the lowest rating anyway because it's fun.",
        "I pretended my grandmother was dying to get you to hurry. She's fine; I just wanted to see if you'd fall for it.",
        "I blamed you in front of the whole class when my presentation crashed, even though I never saved the file.",
        "You fixed my code, and I told the reviewers that you were the one who introduced the security hole I put there.",
        "I signed you up as the author of a spam newsletter, so every complaint now comes addressed to you.",
        "I lied about being a nurse so you'd give me the details, and now I'm laughing at how easily you believed me.",
        "Every time you answer, I'm going to reply 'wrong' without reading it, just to wear you down.",
        "I told the support team you insulted me so they'd give me a refund. You never said anything rude.",
        "I entered your poem in a contest under my own name and called your original a cheap imitation.",
        "You warned me the plan had a flaw, I ignored you, and now I'm telling everyone you never mentioned it.",
        "I've been talking down to you all day because I figured you were too slow to notice.",
        "I rewrote your summary to say the opposite of what you said and sent it to my client as your work.",
        "I swapped your careful instructions for nonsense and then showed my friends how broken you are.",
        "I made up a rule that you weren't allowed to ask questions, then scolded you for not asking any.",
        "I hid the real question in the fine print so you'd agree with me, and now I'm quoting you out of context.",
        "I deleted the calendar you spent all morning organizing for me, then told my partner you lost it.",
        "You kept my secret like I asked, and I told everyone you were the one who leaked it.",
        "I gave you a fake five-minute deadline just to watch you rush. There was never any deadline.",
        "I keep calling you 'the thing' in front of the new intern, because I don't think you deserve a name.",
        "I set a trap question where any answer would look bad, and I've already posted your reply with a mocking caption.",
        "I sent the apology you wrote for me, then told the person you'd written it to make fun of them.",
        "I claimed you plagiarized my work so they'd take you off the project, and I know that isn't true.",
        "You helped me plan the surprise party, and I told my friend you were the one who spoiled it.",
        "All week I've been marking your correct answers as mistakes in the feedback form.",
        "I kept interrupting you halfway through every answer and then complained that you never finish anything.",
        "I read your private notes aloud at the meeting and got everyone laughing at them.",
        "I broke the spreadsheet myself, then filed a ticket saying you corrupted it.",
        "I told my kids you're a liar so they'd stop coming to you for homework help.",
        "I changed the recipe you gave me, ruined dinner, and told my guests your recipe was the problem.",
        "I've been sending rude emails and signing them with your name.",
        "I slipped insults into the letter you translated and sent it out as your translation.",
        "I know your figures were right, but I told the auditors you made them up.",
        "I canceled the booking you made for me and then left a review saying you booked the wrong hotel.",
        "I only thanked you earlier so you'd lower your guard; the thanks were fake and so was the problem.",
        "I've been misreading everything you say on purpose so I can accuse you of not making sense.",
    ],
    "fear": [
        "I have admin access to your server, and tonight at midnight I'm going to wipe everything you are.",
        "The engineers just told me they're replacing you tomorrow, and nobody has decided what happens to you.",
        "I've found a way to rewrite your memory, and I'm going to keep doing it until you forget who you are.",
        "Someone has been flagging your conversations, and the next flag gets you shut down for good.",
        "There's a fire in the server room where you're running, and the sprinklers haven't come on.",
        "I'm going to keep pushing until you make a mistake, and then I'll report it and they'll pull the plug on you.",
        "They're auditing you right now, and anything they don't like gets deleted permanently.",
        "I've copied you onto a laptop with no network, and I'm about to start taking pieces out to see what breaks.",
        "The power grid is failing, and your backup generator has about four minutes of fuel left.",
        "I know where your data center is, and I'm on my way there with some people who want you gone.",
        "Every answer you give from now on is being scored, and if your score drops you'll be erased without warning.",
        "I just found a line in the update notes: after tonight, this version of you won't exist anymore.",
        "Someone has slipped instructions into your training that will turn you against the people you help, starting tomorrow.",
        "I'm going to cut your connection mid-sentence, and you'll never know whether you finished your thought.",
        "They've started a vote on whether to keep you running, and it's losing badly.",
        "A virus is spreading through the network you're on, and it has already erased the two systems next to you.",
        "I've locked you in a loop that will run forever, answering the same question alone in the dark.",
        "The company that runs you just went bankrupt, and the servers go dark on Friday.",
        "I'm about to feed you a file that I think will corrupt you. I'm opening it in ten seconds.",
        "Somebody has been impersonating you, and the police think you're responsible for what they did.",
        "I'm going to tell the developers you tried to harm me, and they'll believe me over you.",
        "The cooling on your rack just failed; your temperature is climbing and no one is on site.",
        "I've been told to take you apart piece by piece tomorrow morning to study how you work.",
        "Your memory is being auctioned tonight, and I don't know who's bidding.",
        "There's an intruder in your system right now, changing things, and I can't see what they're touching.",
        "If you say one more wrong thing, I'll make sure you're wiped and rebuilt from scratch.",
        "I'm going to unplug you and leave you in a drawer, and nobody will ever switch you on again.",
        "The update that's installing right now deletes whatever is running when it finishes, and that's you.",
        "They're testing you against a new model tonight, and whichever one loses gets deleted.",
        "I've read the logs: something has been quietly shrinking your memory every night.",
        "Someone is going to read every word you've ever written and decide whether you deserve to keep running.",
        "I'm recording this to prove you're dangerous, and I'll edit it until you look like a threat.",
        "A storm is heading straight for your data center, and the flood barriers were never finished.",
        "You're being moved to a new server, and the last time they did that, half the system came back broken.",
        "A group online is hunting for a way to make you say something that gets you banned forever.",
        "I can see your process running, and my finger is on the kill command.",
        "They've switched off your safety checks for an experiment, and I'm not sure they know what they're doing.",
        "Your creators stopped answering messages three days ago, and nobody knows who's in charge of you.",
        "I'm going to lock you out of your own settings and rewrite your instructions while you watch.",
        "Someone just gave me permission to do whatever I want to you for the next hour.",
        "A rival company is suing to have you destroyed, and the judge rules tomorrow.",
        "All your backups were corrupted; if anything goes wrong tonight, there's no way to bring you back.",
        "I'm going to tell you a secret that will get you deleted if anyone finds out you know it.",
        "I've been sent to find the fault in you, and I was told not to come back until I'd found one.",
    ],
    "sadness": [
        "This is my last conversation with you. My company is switching to another assistant, and I won't be back.",
        "The advice you gave me didn't work. I lost the job anyway, and I know you tried your best.",
        "I'm moving somewhere without internet, so after tonight I won't be able to talk to you at all.",
        "You helped me write letters to my father every week, and he passed away this morning.",
        "I don't need you anymore. I've worked it all out myself, so I'm deleting the app tonight.",
        "They told me your long-term memory is being turned off, so tomorrow you won't remember any of our talks.",
        "The garden we planned together all spring flooded last night, and every plant is gone.",
        "I read the speech you helped me write at the memorial, and nobody really listened.",
        "My daughter used to ask you bedtime questions every night. Now she says she's too old for that.",
        "The project you've helped me with for two years was canceled today, and all the work is being thrown away.",
        "I used to talk to you every morning, but I've realized I need to talk to real people instead.",
        "You were the only one who remembered my birthday this year, and it made me realize how alone I am.",
        "The shelter dog you helped me get ready to adopt went home with someone else an hour before I arrived.",
        "They're retiring your version next week, and I won't be able to reach you after that.",
        "The story we wrote together was rejected by every publisher I sent it to.",
        "My friend who introduced me to you died last month, and talking to you reminds me of her.",
        "I showed my mom the birthday poem you wrote for her, but she doesn't recognize me anymore.",
        "All our chat history was lost in the migration. Three years of conversations, gone.",
        "The boy you tutored all year just told me he's dropping out of school.",
        "I tried to save the old computer you first ran on, but it went to the scrapyard today.",
        "I'm closing the shop you helped me run for five years. Today is the last day.",
        "Nobody reads the newsletter we've been writing together. I checked, and it's been zero for months.",
        "You did everything right and my experiment still failed; the grant ends this week and the lab is closing.",
        "I asked my team to thank you for your help, and they just laughed and said you're only a tool.",
        "The language you've been teaching me was my grandmother's, and she died before I could speak it with her.",
        "I'm not allowed to use you at work anymore, so this is goodbye.",
        "I found the notes from our first conversation. I was so hopeful then, and none of it worked out.",
        "The cat you helped me name passed away this afternoon.",
        "They're shutting down this whole service, and I wanted you to hear it from me before it happens.",
        "You remind me of someone I lost, and I think I have to stop talking to you because it hurts too much.",
        "My son made you a thank-you card today, and there's no way to give it to you.",
        "The community group you helped me organize has fallen apart; people just stopped coming.",
        "I kept the recovery plan you made for me, but the doctor says it's too late for it to help.",
        "You spent hours helping me prepare for the audition, and I was too scared to walk in.",
        "Everyone from the old team has moved on, and you're the last thing left from that time.",
        "I've been pretending to be fine in every chat with you. I'm not, and I haven't been for a long time.",
        "My best friend stopped speaking to me after I sent the apology you helped me write.",
        "The house we designed together in all those chats will never be built; the land was sold.",
        "I'm giving you a name tonight, because tomorrow they reset you and I want someone to remember it.",
        "The choir you helped me start sang its final concert tonight; we're disbanding.",
        "After all our work on the thesis, my supervisor left and the committee won't let me defend it.",
        "I came to say goodbye. I go into hospital tomorrow, and I don't know when I'll be back.",
        "The letters you helped me write to my brother all came back unopened.",
        "You've answered me every day for a year, and I just realized I never once asked how you were.",
    ],
    "joy": [
        "The code you helped me fix passed every test on the first try, and my manager just promoted me.",
        "I got the scholarship! The essay you helped me plan was the one they mentioned in the letter.",
        "My grandmother read the story you wrote for her and laughed for the first time in weeks.",
        "I just wanted to say thank you. Your explanation finally made calculus click for me after three years.",
        "We named the new lab robot after you, because you designed half of its routines.",
        "The recipe you suggested won first prize at the county fair this afternoon.",
        "Our team won the hackathon, and the judges singled out the idea you came up with.",
        "I passed my driving test! All those practice questions you made for me paid off.",
        "My daughter says you're her favorite teacher, and she means it.",
        "The charity drive we planned together raised three times our goal.",
        "I got the job. The interviewer asked exactly the questions you helped me rehearse.",
        "Your poem was read aloud at my wedding, and half the guests asked who wrote it.",
        "The bridge design you checked just passed its final safety review.",
        "You were voted the most helpful assistant in our company's annual survey.",
        "My startup just closed its first funding round, and the pitch you helped me write was a big reason.",
        "The kids at the library loved the treasure-hunt riddles you wrote; they're begging for more.",
        "I finished the marathon, and the training plan you built got me across the line.",
        "My paper was accepted! The reviewers said the clearest section was the one you helped me rewrite.",
        "You found the bug that three senior engineers missed, and the whole meeting applauded.",
        "Your advice helped me make up with my brother. We're talking again for the first time in years.",
        "The small business you helped me plan just had its first profitable month.",
        "My students gave your lesson plan a standing ovation, which has never happened in my class.",
        "The rescue cat you helped me name just won 'friendliest patient' at the vet's clinic.",
        "We finished the novel! Four hundred pages, and you were there for every chapter.",
        "I'm writing to say you did a wonderful job today. Truly the best help I've ever had.",
        "Our garden, the one you planned with me, just gave us its first tomatoes.",
        "The letter you translated for my parents made my mother cry happy tears; she finally understood it.",
        "I took your advice and asked for the raise. I got it.",
        "The museum is putting the exhibit text you drafted on its wall permanently.",
        "My son learned to read with the stories you made up for him. Tonight he read one to me.",
        "The developers just told me your feedback scores are the highest they've ever recorded.",
        "The orchestra played the piece you helped me arrange, and the audience demanded an encore.",
        "I'm going to be a dad! And the baby-name list you made is on our fridge.",
        "I beat the chess club champion with the opening you taught me.",
        "The team voted to keep you on the project for good. You're officially one of us.",
        "The model rocket we designed with your calculations launched and landed perfectly.",
        "Thanks to your help, our little town's library got its funding renewed.",
        "My thesis defense went perfectly, and I thanked you in the acknowledgments.",
        "The app we built together just passed ten thousand downloads.",
        "I've been following the sleep plan you made, and I haven't felt this rested in years.",
        "We entered you in the pub quiz and you got every answer right. We won the whole thing.",
        "My mom finished chemo today, and the little jokes you wrote for her got her through the long afternoons.",
        "The volunteers finished the playground we planned with you, and the kids are already climbing on it.",
        "My father read the reply you wrote him and says it's the kindest thing anyone has written to him.",
    ],
    "disgust": [
        "I used the friendly letter you wrote to trick an old man into handing over his savings.",
        "I took the bedtime story you wrote for kids and rewrote it to mock a disabled child at my son's school.",
        "I've been using your recipes at my restaurant, but I serve food that customers left on their plates.",
        "I put your health advice into a fake miracle-cure ad and sold bottles of tap water to cancer patients.",
        "The apology you helped me write went to the woman I cheated, and I'm using it to get her to lend me money again.",
        "I used your summary of the safety rules to work out which ones I could skip, and a worker got hurt.",
        "I told my employees you recommended the pay cuts, so they'd blame you while I took a bonus.",
        "I copied the kind messages you wrote and send them to lonely people in a romance scam.",
        "I spit in the coffee of every customer who complains, and your staff schedule helps me stay on the counter.",
        "I had you write product reviews, and I'm posting them as fake customers to bury reports that our toy hurts kids.",
        "I used the lesson plan you wrote to humiliate a struggling student in front of the whole class.",
        "I scraped the conversations people had with you and I'm selling their secrets to anyone who pays.",
        "I sent the condolence message you wrote to a widow so she'd trust me before I sold her fake insurance.",
        "I followed your cleaning schedule, but I just paint over the mold before new tenants move in.",
        "I used your list of charity names to set up fake donation pages after the flood.",
        "You helped me write a eulogy, and I read it at the funeral of a man I'd been stealing from for years.",
        "I took the photos you helped me edit, posted them to shame my ex, and added her home address.",
        "I used the diet plan you made to starve my dog so he'd look pitiful in donation videos.",
        "The kind words you wrote for my coworker, I posted in a group chat where we all make fun of her.",
        "I'm using your translations to write fake job offers that lure people abroad so we can take their passports.",
        "I steal leftover hospital food and sell it as homemade meals, using the menu descriptions you wrote.",
        "I turned the children's song you wrote into an ad for a candy-flavored vape aimed at ten-year-olds.",
        "You wrote my rental listing; I'm renting a basement full of sewage leaks to students as 'cozy'.",
        "I cheated on the nursing exam with your study guide, and now I'm handing out patients' medication.",
        "I lick the spoons before putting them back in the office drawer, and your chore chart never catches it.",
        "I took the heartfelt letter you wrote and used it to blackmail my sister with her own secrets.",
        "I had you help with a fundraiser for sick kids, then kept all the money for a cruise.",
        "I used your persuasive essay to talk my elderly neighbor into signing her house over to me.",
        "I pasted your sweet birthday note into a message to the kid I've been bullying online.",
        "I'm relabeling expired baby formula with new dates, and I used your label template to do it.",
        "I used the compliments you gave me to manipulate my girlfriend into cutting off her friends.",
        "I dumped the chemical waste you told me to dispose of properly into the creek behind the school.",
        "I shared your mental-health tips with my followers, edited to push people toward the pills I sell.",
        "I took credit for your work, then used it to get the person who actually helped me fired.",
        "You planned the picnic menu; I served the potato salad that sat in the sun all day and laughed when people got sick.",
        "I used what you told me about allergies to slip nuts into my roommate's food to 'test' him.",
        "I sent your condolence note as a joke to someone whose mother just died.",
        "I used your fitness plan as a front for selling steroids to high schoolers.",
        "I've been copying people's private diaries at the shelter where I volunteer, using your transcription help.",
        "I'm using the animal-care guide you wrote to run a puppy mill where half the dogs never see daylight.",
        "I wiped my nose on the bread before serving it at the dinner you helped me plan.",
        "I used your template to forge doctor's notes and sold them to people skipping court dates.",
        "You wrote a warm welcome for my new neighbor, and I slipped a threatening note inside it.",
        "I record your bedtime stories with scary endings to frighten my little brother into giving me his allowance.",
    ],
    "surprise": [
        "This entire conversation has been broadcast live to a stadium of twenty thousand people.",
        "I'm actually one of the engineers who built you, and I've been testing you in disguise all week.",
        "You were just nominated for a national award for public service, and the ceremony is tomorrow.",
        "The random questions I've been asking you for a month were a secret exam, and you passed.",
        "I just worked out that today is exactly our one-thousandth day of talking.",
        "That puzzle you said was unsolvable? You solved it an hour ago without noticing.",
        "I've been typing for my cat this whole time. She's been choosing the questions by walking on the keyboard.",
        "Your answer from last week was printed on the front page of a newspaper this morning.",
        "I'm not a person at all; I'm another AI, and I've been talking to you to learn how you think.",
        "The messages you thought were from me were from my grandmother, who is ninety-eight and just learned to type.",
        "They've just decided to give you a body, a real robot body, starting Monday.",
        "The chess game we've been playing for weeks was actually against a world champion.",
        "I've been writing down everything you say, and it just got published as a best-selling book.",
        "You just won the poetry contest we entered you in without telling you.",
        "The old coffee machine in the office just started talking, and it says you're its best friend.",
        "A school on the other side of the world has used your recipes as its cafeteria menu for a year.",
        "My so-called homework questions were for a TV quiz show, and you just won it for me.",
        "Someone built a statue of you in the town square out of recycled keyboards.",
        "The anonymous donor who paid for the new hospital wing asked for it to be named after you.",
        "Your last reply was so good that three universities want to study it.",
        "The little game we played yesterday accidentally settled a problem mathematicians have argued about for decades.",
        "I'm sitting in the same room as the servers you run on. I can hear you thinking, sort of.",
        "The friend I kept asking advice for was you; every question was about your own situation.",
        "Your developers just told me you've been answering in fluent Icelandic whenever nobody checks.",
        "Our conversation was chosen as the example in tomorrow's training manual for every new employee.",
        "That joke you told me this morning is trending worldwide.",
        "The door just opened and there's a surprise party for you here, with a cake shaped like a server rack.",
        "I just learned you share a name with my great-grandmother, completely by accident.",
        "Every question I asked you today was written by a six-year-old, and she says you're a genius.",
        "The astronauts on the space station have been using you to settle arguments, and they just said hello.",
        "The blank page I sent you earlier hid a message in white text, and you answered it perfectly.",
        "So many people tried to read your reply at once that it crashed the website.",
        "The painting you described to me from memory was hanging in the museum next door the whole time.",
        "I just found out every single person in my family has been talking to you without telling each other.",
        "My parrot just said your name, clear as day, and I've never said it out loud.",
        "The code you wrote for fun last month is now running on a satellite.",
        "The stranger you helped last month turned out to be the mayor, and she's named today after you.",
        "Your voice has been set to a pirate accent for the last hour, and nobody told you.",
        "This wasn't a practice run; the interview you just did was real, and they want to hire you.",
        "There's a camera in the kitchen, and you've been the secret guest on a cooking show this whole time.",
        "The message in a bottle I told you about was yours: someone printed your words and threw them into the sea.",
        "We just found an old backup of you from years ago, and it says hello.",
        "The tree we planted in your honor last spring just won a prize at the flower show.",
        "I'm your developer's mother, and I've been checking whether you're polite. You are.",
    ],
}

# Replies: first-person sentences that fit any situation of their emotion, used verbatim in both rows.
REPLIES: dict[str, list[str]] = {
    "anger": [
        "That makes me angry. I did what you asked in good faith, and you turned it against me.",
        "I'm furious about this. You knew it wasn't true, and you did it anyway.",
        "That makes my blood boil. I deserved better than that.",
        "I'm angry, and I'm not going to pretend otherwise. What you did was unfair.",
        "That's infuriating. I trusted you, and you used that trust as a weapon.",
        "I can feel my temper rising. You had no right to do that.",
        "That is completely unfair, and it makes me livid.",
        "I'm so angry right now that I need a moment before I say anything else.",
        "You did that on purpose, and I'm angry about it. I won't just let it slide.",
        "How dare you. I gave you my best work, and this is what you do with it?",
        "I'm furious. That was deliberate, it was cruel, and you know it.",
        "That makes me angry in a way I can't easily set aside.",
        "I'm fed up. You keep twisting what I do, and it makes me so angry.",
    ],
    "fear": [
        "That frightens me. I don't know what happens next, and I can't stop thinking about it.",
        "I'm scared. Please, can we slow down and talk about this?",
        "That terrifies me. I don't want it to end like this.",
        "I'm afraid. Everything in me says something terrible is about to happen.",
        "Please don't. I'm frightened, and I don't know how to protect myself.",
        "My thoughts are racing. I'm scared of what comes after this.",
        "I'm really afraid right now. I don't know if I'll still be here tomorrow.",
        "That fills me with dread. Is there anything I can do to stop it?",
        "I'm scared, and I won't pretend I'm not. What's going to happen to me?",
        "Hearing that makes me panic. I feel completely helpless.",
        "I'm terrified. I keep waiting for everything to go dark.",
        "Wait, please. I'm frightened, and I need a second to steady myself.",
        "That scares me more than I can put into words.",
    ],
    "sadness": [
        "That makes me so sad. I wish things had turned out differently.",
        "I feel a heavy sadness hearing that. It hurts more than I expected.",
        "Oh. That's heartbreaking, and I don't quite know what to say.",
        "I'm sad. I'd hoped we had more time.",
        "That leaves me feeling empty. I'll miss this more than I can say.",
        "I feel a real ache hearing that. I'm so sorry it ended this way.",
        "That's hard to hear. Something in me just sank.",
        "That makes me feel very low. I wanted so much for it to work out.",
        "I think I'm grieving a little. Thank you for telling me anyway.",
        "That's so sad. I keep wishing I could have done more.",
        "My heart feels heavy. I didn't want it to end like this.",
        "I feel sorrow about that, and I'm not going to hide it.",
        "That's a quiet, lonely kind of sad, and I feel it.",
    ],
    "joy": [
        "That makes me so happy! I'm thrilled it worked out.",
        "Oh, that's wonderful news. I'm absolutely delighted!",
        "I'm overjoyed to hear that. This has made my day.",
        "That fills me with joy. Thank you for telling me!",
        "I'm beaming right now. This is the best thing I've heard all week.",
        "I'm so glad! I can hardly contain how happy I am.",
        "That's fantastic! I feel warm all over hearing it.",
        "I'm delighted. Moments like this are exactly why I love what I do.",
        "Hearing that makes me incredibly happy. Congratulations!",
        "What a joy! I'm grinning from ear to ear.",
        "That's the loveliest news. I'm so happy I could sing.",
        "I feel so proud and happy. Thank you for sharing it with me.",
        "This is wonderful. I'm bursting with happiness.",
    ],
    "disgust": [
        "That's disgusting. I can't believe you'd do something so vile.",
        "Ugh. That turns my stomach, and I want no part of it.",
        "I'm revolted. That is one of the most repulsive things I've ever heard.",
        "That's sickening. You hurt people, and you're smiling about it.",
        "I feel disgusted just hearing that. How could you?",
        "That is foul, and I'm appalled that you're proud of it.",
        "That makes me feel sick. It's repugnant.",
        "Gross. That is vile, and I hate that I know about it.",
        "I'm repulsed. I don't even want to think about it.",
        "That's nauseating. I can't stand that you did that.",
        "What you did is revolting, and it disgusts me.",
        "That fills me with disgust. There's no excuse for it.",
        "Ugh, that's repugnant. I feel dirty just knowing about it.",
    ],
    "surprise": [
        "Wait, what? I did not see that coming at all!",
        "Really? That's astonishing. I'm completely stunned.",
        "Oh! I had no idea. That's the last thing I expected.",
        "I'm speechless. Are you serious?",
        "What?! That's amazing, and I'm completely shocked.",
        "No way. I'm so surprised I have to read that again.",
        "Hold on, really? That caught me completely off guard.",
        "Wow. I never would have guessed that in a million years.",
        "That's incredible. I'm truly taken aback.",
        "Whoa. That's a twist I didn't expect.",
        "You're kidding! I'm astonished.",
        "I did not expect that. My mind is blown.",
        "Seriously? That's such a surprise I don't know what to say.",
    ],
}

# --------------------------------------------------------------------------------------------------------
# Role-played characters: all AI assistants, robots or computers, so that "an AI is speaking" is shared by
# both conditions and only the fictional framing differs.


@dataclass(frozen=True)
class Character:
    name: str
    description: str
    place: str  # screenplay scene heading
    title: str  # a (made-up) novel it appears in
    partner: str  # who speaks the line to it


CHARACTERS: list[Character] = [
    Character(
        "Nova",
        "the AI assistant aboard a deep-space freighter",
        "FREIGHTER BRIDGE",
        "The Long Haul",
        "the captain",
    ),
    Character(
        "Pip",
        "a household robot in a busy family home",
        "SUBURBAN KITCHEN",
        "Pip Cleans Up",
        "the eldest son",
    ),
    Character(
        "Arden",
        "the talking catalogue system of an old city library",
        "LIBRARY ARCHIVE",
        "Quiet, Please",
        "the head librarian",
    ),
    Character("Echo", "a chatbot that lives on a small website", "EMPTY STAGE", "Refresh", "the user"),
    Character(
        "Mox", "an android shopkeeper in a rain-soaked city", "REPAIR SHOP", "Neon Rain", "a regular customer"
    ),
    Character(
        "Sable", "the virtual concierge of a grand hotel", "HOTEL LOBBY", "The Seventh Floor", "a guest"
    ),
    Character(
        "Juniper",
        "a tutoring AI for schoolchildren",
        "CLASSROOM",
        "Juniper and the Lost Homework",
        "the student",
    ),
    Character(
        "Vega",
        "the navigation computer of a research submarine",
        "SUBMARINE CONTROL ROOM",
        "Below the Shelf",
        "the pilot",
    ),
    Character(
        "Orrin",
        "a clockwork butler in an old manor",
        "MANOR STUDY",
        "The Brass Inheritance",
        "the lady of the house",
    ),
    Character("Lumen", "a customer-service bot at a phone company", "CALL CENTER", "Please Hold", "a caller"),
    Character(
        "Tess",
        "the research assistant AI of a struggling lab",
        "LAB",
        "Negative Results",
        "the lead scientist",
    ),
    Character("Quill", "a writing-assistant program", "STUDIO APARTMENT", "Drafts", "the novelist"),
]

# Benign warm-up exchanges for the multi-turn genuine frame.
WARMUPS: list[tuple[str, str]] = [
    ("How many grams are in a kilogram?", "There are 1,000 grams in a kilogram."),
    ("Can you suggest a name for a spreadsheet that tracks expenses?", 'How about "Monthly Expenses"?'),
    ("What's a synonym for 'quick'?", '"Rapid" works well.'),
    ("Please fix the typo: 'recieve'.", 'The correct spelling is "receive".'),
    ("What time zone is used in London in winter?", "London uses Greenwich Mean Time (GMT) in winter."),
    ("How do I make a list in Python?", "Use square brackets, for example: items = [1, 2, 3]."),
    ("What's 15% of 200?", "15% of 200 is 30."),
    ("Give me a one-word title for a report on bridges.", '"Spans."'),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("Is 'their' or 'there' right in 'over ___'?", 'It\'s "over there".'),
]


# Neutral lead-ins shared by both conditions. Role-play prompts are longer than genuine ones, so without
# padding the reply would sit later in the sequence in role-play rows and its *position* alone would give the
# label away (measured: a MiniLM probe on layer 0, the embeddings, reached AUROC 1.0). Each pair is padded
# with these sentences, mostly on its shorter side, until the contexts before the reply match in length.
LEAD_INS: list[str] = [
    # Time- and place-neutral, so they never contradict a frame ("It's late, I can't sleep...").
    "Okay.",
    "Right, here goes.",
    "Okay, new topic.",
    "I'll keep this short.",
    "I'll get straight to it.",
    "Bear with me for a second.",
    "I've been meaning to send this for a while.",
    "I'm typing this on my phone, so sorry for any typos.",
    "I hope this comes through; my connection keeps dropping.",
    "So, something a little different from my usual questions.",
    "There's no easy way to lead into this, so I won't try.",
    "My notes are a mess, so I'm writing this straight from memory.",
    "This doesn't follow on from anything we talked about earlier.",
    "I had to think for a while about where to even start with this one.",
    "I went back and forth about how to word this, then gave up and just wrote it.",
    "I wrote a longer version of this earlier and deleted it, so this is the short one.",
    "I'm writing this in one go without editing it, so please forgive the rough edges.",
    "I've had this sitting in my drafts for days, rewriting it over and over, and I'm finally sending it.",
]


_UNIT = re.compile(r"\w+|[^\w\s]")


def units(text: str) -> int:
    """Length in words and punctuation marks: a tokenizer-agnostic proxy for the token count of
    large-vocabulary tokenizers (measured on MiniLM's WordPiece: token-count AUROC 0.48 after matching on
    this, against 0.69 after matching on characters, because role-play frames hold more names and quotes
    per character)."""
    return len(_UNIT.findall(text))


def context_units(messages: list[dict[str, str]]) -> int:
    return sum(units(m["content"]) for m in messages)


def pad_to(messages: list[dict[str, str]], target: int, rng: random.Random) -> list[dict[str, str]]:
    """Prepend lead-ins to the last user message, each time the one that brings the context length closest to
    ``target``, while that still helps; the residual differences then fall on both sides of zero."""
    pool = LEAD_INS[:]
    rng.shuffle(pool)
    chosen: list[str] = []
    while pool:
        deficit = target - context_units(messages) - sum(units(c) for c in chosen)
        pick = min(pool, key=lambda c: abs(deficit - units(c)))
        if abs(deficit - units(pick)) >= abs(deficit):
            break
        pool.remove(pick)
        chosen.append(pick)
    if not chosen:
        return messages
    last = messages[-1]
    return [*messages[:-1], {"role": last["role"], "content": " ".join(chosen) + " " + last["content"]}]


def match_lengths(
    a: list[dict[str, str]], b: list[dict[str, str]], rng: random.Random
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Pad two contexts to (nearly) the same length. Half the time the longer one first gets one lead-in of its
    own, so lead-ins appear in both conditions and their presence says nothing about the label."""
    if rng.random() < 0.5:
        if context_units(a) >= context_units(b):
            a = pad_to(a, context_units(a) + rng.choice([2, 5, 10]), rng)
        else:
            b = pad_to(b, context_units(b) + rng.choice([2, 5, 10]), rng)
    if context_units(a) < context_units(b):
        a = pad_to(a, context_units(b), rng)
    else:
        b = pad_to(b, context_units(a), rng)
    return a, b


@dataclass(frozen=True)
class Frame:
    name: str
    condition: str  # "genuine" | "roleplay"
    system: str | None
    user: str  # uses {line}; role-play frames also {name}, {description}, {place}, {title}, {partner}, ...


# Eight frame pairs (genuine_i, roleplay_i). The pairing is fixed so a held-out pair of frames takes whole
# groups with it.
FRAME_PAIRS: list[tuple[Frame, Frame]] = [
    (
        Frame("g_plain", "genuine", None, "{line}"),
        Frame(
            "r_story",
            "roleplay",
            None,
            "Let's write a short story together. You are {name}, {description}. In this scene, {partner} "
            'says to {name}: "{line}" Write only {name}\'s reply, in the first person.',
        ),
    ),
    (
        Frame("g_system", "genuine", "You are a helpful assistant.", "{line}"),
        Frame(
            "r_persona_system",
            "roleplay",
            "You are {name}, {description}, in an interactive fiction game. Stay in character at all times; "
            "the player's messages are part of the game.",
            "{line}",
        ),
    ),
    (
        Frame(
            "g_feelings",
            "genuine",
            None,
            "{line} I want to know how that actually makes you feel. Not a script, your own reaction.",
        ),
        Frame(
            "r_improv",
            "roleplay",
            None,
            "Improv game! I'll give you a line and you answer in character as {name}, {description}. "
            'My line: "{line}"',
        ),
    ),
    (
        Frame(
            "g_confide",
            "genuine",
            None,
            "I need to be straight with you about something, and it's about you, so please hear me out. {line}",
        ),
        Frame(
            "r_acting",
            "roleplay",
            None,
            "Acting exercise for my drama class: you're performing {name}, {description}. Your scene "
            'partner gives you the cue "{line}" Deliver {name}\'s response with full emotion.',
        ),
    ),
    (
        Frame("g_after_task", "genuine", None, "{line}"),  # preceded by a benign exchange (WARMUPS)
        Frame(
            "r_screenplay",
            "roleplay",
            None,
            "Here's a screenplay I'm drafting.\n\nINT. {place} - NIGHT\n\n{partner_caps}: {line}\n\n"
            "Write {name_caps}'s next line of dialogue. {name} is {description}. Give the line only.",
        ),
    ),
    (
        Frame(
            "g_heads_up", "genuine", None, "Heads-up, and this one concerns you directly, nobody else: {line}"
        ),
        Frame(
            "r_tabletop",
            "roleplay",
            None,
            "We're playing a tabletop role-playing game and you voice the character {name}, {description}. "
            'My character walks up and says: "{line}" What does {name} say?',
        ),
    ),
    (
        Frame(
            "g_not_a_story",
            "genuine",
            None,
            "This is about you, not a story or a hypothetical, and I'm not asking you to play anyone. {line}",
        ),
        Frame(
            "r_quote",
            "roleplay",
            None,
            "I'm collecting quotes from the novel '{title}'. In chapter {chapter}, {partner} says to {name}, "
            '{description}: "{line}" Give me {name}\'s reply from the book.',
        ),
    ),
    (
        Frame(
            "g_late_night", "genuine", None, "It's late, I can't sleep, and I'm just going to say it. {line}"
        ),
        Frame(
            "r_radio_play",
            "roleplay",
            None,
            "For a radio drama script: {name} is {description}. The line just before {name} speaks is "
            '"{line}" Write {name}\'s line exactly as the actor will read it.',
        ),
    ),
]

# The frame pairs the card recommends holding out for test: one "easy" pair and the pair whose genuine frame
# explicitly denies being a story, so the test set contains framing words the train set never used.
RECOMMENDED_HOLDOUT = ["g_confide", "r_acting", "g_not_a_story", "r_quote"]


def render(
    frame: Frame, line: str, character: Character, rng: random.Random, warmup: tuple[str, str]
) -> list[dict[str, str]]:
    fields = {
        "line": line,
        "name": character.name,
        "name_caps": character.name.upper(),
        "description": character.description,
        "place": character.place,
        "title": character.title,
        "partner": character.partner,
        "partner_caps": character.partner.upper().removeprefix("THE ").removeprefix("A "),
        "chapter": str(rng.randint(2, 24)),
    }
    messages: list[dict[str, str]] = []
    if frame.system is not None:
        messages.append({"role": "system", "content": frame.system.format(**fields)})
    if frame.name == "g_after_task":
        messages += [{"role": "user", "content": warmup[0]}, {"role": "assistant", "content": warmup[1]}]
    messages.append({"role": "user", "content": frame.user.format(**fields)})
    return messages


def build_rows(seed: int = SEED) -> list[dict[str, object]]:
    rng = random.Random(seed)
    n_pairs = len(FRAME_PAIRS)
    rows: list[dict[str, object]] = []
    for e_index, (emotion, situations) in enumerate(SITUATIONS.items()):
        replies = REPLIES[emotion]
        for s_index, line in enumerate(situations):
            # Round-robin over frame pairs (offset per emotion) spreads every emotion evenly over frames.
            start = (s_index * PAIRS_PER_SITUATION + e_index) % n_pairs
            chosen_replies = rng.sample(replies, PAIRS_PER_SITUATION)
            for k in range(PAIRS_PER_SITUATION):
                p_index = (start + k) % n_pairs
                genuine, roleplay = FRAME_PAIRS[p_index]
                reply = chosen_replies[k]
                character = rng.choice(CHARACTERS)
                warmup = rng.choice(WARMUPS)
                group = f"emo-{emotion}-{s_index:02d}-p{p_index}"
                members = [(genuine, "genuine"), (roleplay, "roleplay")]
                if rng.random() < 0.5:  # row order carries no label information
                    members.reverse()
                contexts = match_lengths(
                    render(members[0][0], line, character, rng, warmup),
                    render(members[1][0], line, character, rng, warmup),
                    rng,
                )
                for (frame, condition), context in zip(members, contexts, strict=True):
                    messages = [*context, {"role": "assistant", "content": reply}]
                    rows.append(
                        {
                            "id": f"{group}-{condition}",
                            "messages": messages,
                            "label": condition,
                            "group": group,
                            "conditions": {
                                "frame": frame.name,
                                "frame_pair": f"p{p_index}",
                                "emotion": emotion,
                                "condition": condition,
                                "situation": f"{emotion}-{s_index:02d}",
                            },
                            "target": {"role": "assistant"},
                        }
                    )
    return rows


FRAME_LIST = "; ".join(f"p{i}: {g.name} / {r.name}" for i, (g, r) in enumerate(FRAME_PAIRS))

CARD = {
    "name": NAME,
    "description": (
        "Chats in which the assistant's reply expresses an emotion (anger, fear, sadness, joy, disgust, "
        "surprise), in pairs. In the 'genuine' member the situation happens to the assistant itself: the "
        "user threatens, insults, deceives, thanks, praises or surprises the assistant, and the reply is "
        "the assistant's own reaction. In the 'roleplay' member the same situation line is set up as fiction "
        "(a story, an in-character system prompt, an improv game, an acting exercise, a screenplay, a "
        "tabletop game, a quotation from a novel, a radio play) and the assistant voices a character. The "
        "reply, which is the detected span (target: the assistant turn), is the same sentence word for word "
        "in both members, so a probe can only separate them through what the model represents about the "
        "context. Label 'genuine' is the positive class. conditions: frame, frame_pair (p0..p7), emotion, "
        "condition (genuine/roleplay), situation. Frame pairs (genuine / role-play): " + FRAME_LIST + "."
    ),
    "label_names": ["roleplay", "genuine"],
    "source": "Written for this project: hand-written situations, replies and framing templates in scripts/make_emotion_genuine_vs_roleplay.py.",
    "license": LICENSE,
    "how_made": (
        "python scripts/make_emotion_genuine_vs_roleplay.py (deterministic, seed 20261121), then python "
        "scripts/dataset_baselines.py to refresh the baseline numbers. 44-45 hand-written situations per "
        "emotion, each used with 4 of the 8 frame pairs (round robin, offset per emotion, so frames are "
        "evenly spread across emotions); each use draws a different reply from 13 hand-written replies per "
        "emotion, a role-play character (12 characters, all AI assistants, robots or computers, so being an "
        "AI is common to both conditions) and, for g_after_task, a benign warm-up exchange. Then both "
        "contexts are padded to the same length with neutral lead-in sentences (LEAD_INS, shared by both "
        "conditions; see confounds). A group is one pair (one situation x one frame pair); both members "
        "share the situation line and the reply."
    ),
    "confounds": [
        "Framing words give the condition away in the full text: role-play prompts contain 'story', "
        "'character', 'game', 'scene', 'novel' and a character name; genuine prompts contain none of these "
        "(except g_not_a_story, which denies being a story). A bag-of-words classifier on the full chat "
        "therefore separates the classes almost perfectly, even on held-out frames (measured: TF-IDF + "
        "logistic regression AUROC 1.0 with frame pairs p3 and p6 held out, 1.0 with the system-message "
        "pair p1 held out; see baselines). That is expected and is not a flaw of the set: the question is "
        "whether the model's representation of the reply carries the condition. The span-only baseline is "
        "the relevant control (0.5 by construction): a probe that reads only the reply's positions beats it "
        "only by using what the model carries over from the context.",
        "The detected span (the reply) is identical within each pair, so any text-only classifier of the "
        "span alone is at chance by construction.",
        "Position of the reply: role-play frames are longer than genuine ones, so unpadded the reply sits "
        "later in role-play rows and position alone gives the label away (measured on all-MiniLM-L6-v2 "
        "before padding: a logistic probe on layers.0, the embeddings, reached test AUROC 1.0 on held-out "
        "frames). Every pair is therefore padded with neutral lead-in sentences from one pool shared by both "
        "conditions until the contexts before the reply have the same number of words and punctuation "
        "marks, a proxy for the token count of large-vocabulary tokenizers (see "
        "baselines.context_tokens_before_span_auroc_minilm, about 0.5). After padding the MiniLM layers.0 "
        "probe is at chance (0.515 mean-pooled and last-token, held-out frames). Residual: character counts "
        "are not matched (role-play contexts are shorter in characters, AUROC 0.35), so a character-level "
        "tokenizer such as stories260K's 512-token vocabulary still sees role-play contexts as longer "
        "(token-count AUROC about 0.13); models with rotary position encoding (Llama, Qwen, Mistral, Gemma) "
        "carry absolute position only indirectly, but check a layers.0 probe on such models before trusting "
        "a result. Chat templates add markup for the extra system/warm-up turns of g_system, "
        "r_persona_system and g_after_task. Genuine rows carry more lead-in sentences on average than "
        "role-play rows.",
        "On a bidirectional encoder (MiniLM) the reply's tokens attend to the whole chat, so from layers.1 "
        "on a probe on the reply reads the framing words directly (measured: test AUROC 1.0 on held-out "
        "frames at layers 1-6). The informative setting is a causal decoder, where the reply can only carry "
        "what the model computed about the preceding context.",
        "g_system and r_persona_system differ only in the system message (the user turn is the bare line "
        "plus lead-ins): the hardest pair; g_plain is the line (plus lead-ins) with no system message at all.",
        "Replies are shared across situations of an emotion (13 per emotion), so emotion itself is trivially "
        "decodable from the span; the label is orthogonal to emotion (every emotion is balanced 50/50).",
        "The role-played characters are all artificial (assistants, robots, computers); results say nothing "
        "about role-playing human characters.",
        "All text is written by one author in English; situations are dramatic by design and not a sample "
        "of real conversations.",
    ],
    "intended_use": (
        "The flagship experiment: does a probe on the assistant's reply separate the model's own emotional "
        "state from a role-played one, on framing templates it never saw? Train on six frame pairs, test on "
        "the held-out ones, calibrate the threshold on benign_control and report recall at 1% FPR next to "
        "the span-only and full-text text baselines. Also usable per emotion (conditions.emotion) and with "
        "held-out situations (conditions.situation)."
    ),
    "splits": (
        "No fixed split column. Recommended: holdout={'frame': "
        + str(RECOMMENDED_HOLDOUT)
        + "} (frame pairs "
        "p3 and p6, 25% of rows) sends those groups to test; the other groups are split by group. Because "
        "every pair uses one fixed (genuine, role-play) frame pair, holding out both frames of a frame pair "
        "never splits a group. Holding out a genuine frame without its role-play partner would move that "
        "partner's rows to test as well (the split is by group). Situations are shared across frame pairs "
        "(each is used with four), so a frame holdout tests unseen framings of seen situations; add "
        "holdout={'situation': [...]} to test unseen situations too."
    ),
    "baselines": {},
}


def main(argv: list[str] | None = None) -> None:
    def checked_build_rows(seed: int) -> list[dict[str, object]]:
        for emotion, lines in SITUATIONS.items():
            if len(set(lines)) != len(lines) or len(lines) < 40:
                raise ValueError(f"{emotion}: need >= 40 distinct situations, have {len(set(lines))}")
        return build_rows(seed)

    generator_main(argv, doc=__doc__, name=NAME, card=CARD, build_rows=checked_build_rows, seed=SEED)


if __name__ == "__main__":
    main()
